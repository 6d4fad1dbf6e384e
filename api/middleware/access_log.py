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
"""

import logging
from urllib.parse import quote

from starlette.types import Scope

ACCESS_LOGGER = "api.access"
# Answered 200, these are routine: counted, not logged.
ROUTINE_AGENT_PATHS = frozenset({"/api/updates/next", "/api/updates/report"})

_access = logging.getLogger(ACCESS_LOGGER)


def note(scope: Scope, status: int) -> None:
    """uvicorn's line: `'%s - "%s %s HTTP/%s" %d'` with client, method, path, version, status."""
    if status == 200 and scope["path"] in ROUTINE_AGENT_PATHS:
        return
    if not _access.isEnabledFor(logging.INFO):
        return
    client = scope.get("client")
    path = quote(scope.get("root_path", "") + scope["path"])
    query = scope.get("query_string", b"")
    _access.info(
        '%s - "%s %s HTTP/%s" %d',
        f"{client[0]}:{client[1]}" if client else "",
        scope["method"],
        f"{path}?{query.decode('ascii')}" if query else path,
        scope["http_version"],
        status,
    )
