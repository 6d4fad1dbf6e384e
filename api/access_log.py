"""uvicorn's access log without a line per routine poll.

Every agent polls every few seconds: one line each would drown the log and cost the API more
than the poll's own checks (each line crosses the supervisor's pipe). Answered polls are
counted in /metrics instead (`rollout_agent_polls_total`, `rollout_http_request_duration_seconds`);
a poll that hands out a job is logged by the route; refused polls and every other request keep
their access line.
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager

ACCESS_LOGGER = "uvicorn.access"
POLL_PATH = "/api/updates/next"


class RoutinePolls(logging.Filter):
    """Drops the access line of a poll answered 200.

    uvicorn logs `'%s - "%s %s HTTP/%s" %d'` with (client, method, path, http version, status).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        routine = (
            isinstance(args, tuple) and len(args) == 5 and (args[2], args[4]) == (POLL_PATH, 200)
        )
        return not routine


@contextmanager
def routine_polls_unlogged() -> Iterator[None]:
    """For the life of one app: the logger is process-wide, and tests start many apps."""
    access = logging.getLogger(ACCESS_LOGGER)
    routine = RoutinePolls()
    access.addFilter(routine)
    try:
        yield
    finally:
        access.removeFilter(routine)
