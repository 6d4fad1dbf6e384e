"""The access log, written by the app itself: a line for every request but an agent's routine
poll or report.

Every agent polls every few seconds and reports each step of a job: one line each would drown the
log and cost the API more than the request's own checks (a line per report was 3 % of the API's CPU
in the 10,000-host benchmark). uvicorn's access log cannot skip a request without first building its
line (a filter sees the finished record), which cost about 8 % of the API's CPU under idle polls, so
`rollout api` turns it off and the request timer (api.middleware.request_timer) calls `note`
instead. Answered polls are counted in /metrics (`rollout_agent_polls_total`,
`rollout_http_request_duration_seconds`, `rollout_agent_reports_total`); a poll that hands out a job
and a report that changes a job's status are logged by the route, and every report is kept in
`job_reports` (the job's timeline); refused agent requests and every other request keep their line,
in uvicorn's format.

Secrets never reach the log, even sent where they do not belong: a query parameter whose name
says it holds one (`?token=`, `?x-cp-admin-token=`, `?secret=`, ...) or whose name or value
holds one of the control plane's secrets is written `[redacted]`.
"""

import logging
import re
from collections.abc import Collection
from urllib.parse import quote, unquote_plus

from starlette.types import Scope

ACCESS_LOGGER = "api.access"
# Answered 200, these are routine: counted, not logged.
ROUTINE_AGENT_PATHS = frozenset({"/api/updates/next", "/api/updates/report"})

REDACTED = "[redacted]"
_SECRET_NAME = re.compile(r"token|secret|passw|signature|api[-_]?key|auth|credential", re.I)

_access = logging.getLogger(ACCESS_LOGGER)


def redacted_query(query: str, secrets: Collection[str] = ()) -> str:
    """The query string with every parameter that names or holds a secret redacted."""
    parts = []
    for part in query.split("&"):
        name, equals, _ = part.partition("=")
        shown_name = unquote_plus(name)
        if any(s in shown_name for s in secrets):
            parts.append(REDACTED)  # the secret is the name itself
        elif _SECRET_NAME.search(shown_name) or any(s in unquote_plus(part) for s in secrets):
            parts.append(f"{name}={REDACTED}" if equals else REDACTED)
        else:
            parts.append(part)
    return "&".join(parts)


def note(scope: Scope, status: int, secrets: Collection[str] = ()) -> None:
    """uvicorn's line: `'%s - "%s %s HTTP/%s" %d'` with client, method, path, version, status."""
    if status == 200 and scope["path"] in ROUTINE_AGENT_PATHS:
        return
    if not _access.isEnabledFor(logging.INFO):
        return
    client = scope.get("client")
    path = quote(scope.get("root_path", "") + scope["path"])
    query = redacted_query(
        scope.get("query_string", b"").decode("ascii", "backslashreplace"), secrets
    )
    _access.info(
        '%s - "%s %s HTTP/%s" %d',
        f"{client[0]}:{client[1]}" if client else "",
        scope["method"],
        f"{path}?{query}" if query else path,
        scope["http_version"],
        status,
    )
