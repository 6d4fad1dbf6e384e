"""The access log, written by the app itself: a line for every request but the routine poll.

Every agent polls every few seconds: one line each would drown the log and cost the API more
than the poll's own checks. uvicorn's access log cannot skip a request without first building
its line (a filter sees the finished record), which cost about 8 % of the API's CPU under idle
polls, so `rollout api` turns it off and the request timer (api.middleware.request_timer) calls
`note` instead. Answered polls are counted in /metrics (`rollout_agent_polls_total`,
`rollout_http_request_duration_seconds`); a poll that hands out a job is logged by the route;
refused polls and every other request keep their line, in uvicorn's format.
"""

import logging
from urllib.parse import quote

from starlette.types import Scope

ACCESS_LOGGER = "api.access"
POLL_PATH = "/api/updates/next"

_access = logging.getLogger(ACCESS_LOGGER)


def note(scope: Scope, status: int) -> None:
    """uvicorn's line: `'%s - "%s %s HTTP/%s" %d'` with client, method, path, version, status."""
    if status == 200 and scope["path"] == POLL_PATH:
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
