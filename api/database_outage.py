"""PostgreSQL unreachable: a 503 with `Retry-After` instead of a 500, and one log line per outage.

Every route reads or writes PostgreSQL, so while it is down each request would otherwise end
in a traceback. The pool reconnects by itself once the server is back; until then callers are
told to come back later (agents are told in a signed answer, like any other).
"""

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.responses import Response

from api.agent_auth import reply_context, signed_response
from api.errors import RETRY_AFTER_SECONDS

log = logging.getLogger(__name__)

DETAIL = "the database (PostgreSQL) is unavailable; retry later"

# What asyncpg raises when the server is gone, restarting or refusing connections; not what it
# raises for a bad query, which stays a bug to see.
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    OSError,  # refused, reset, timed out while connecting
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.exceptions.OperatorInterventionError,  # 57: admin shutdown, cannot connect now
    asyncpg.exceptions.ConnectionDoesNotExistError,  # the server closed a pooled connection
)


class DatabaseOutage:
    """Notes an outage once when it starts and once when a request succeeds again."""

    def __init__(self) -> None:
        self.since: float | None = None

    def noted(self, exc: Exception) -> None:
        if self.since is None:
            self.since = time.monotonic()
            log.error("PostgreSQL is unavailable, answering 503 until it is back: %r", exc)

    def over(self) -> None:
        if self.since is not None:
            log.warning("PostgreSQL is reachable again after %.0f s", time.monotonic() - self.since)
            self.since = None


async def _unavailable(request: Request, exc: Exception) -> Response:
    outage: DatabaseOutage = request.app.state.database_outage
    outage.noted(exc)
    payload: dict[str, Any] = {"detail": DETAIL}
    secret = None
    context = reply_context(request)
    if context is not None:
        secret, payload["nonce"] = context
    response = signed_response(payload, secret, 503)
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


class _ReconnectAttempts(logging.Filter):
    """asyncpg logs a traceback each time it fails to refill the pool; that is this outage."""

    def __init__(self, outage: DatabaseOutage) -> None:
        super().__init__()
        self.outage = outage

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, UNAVAILABLE_ERRORS):
            self.outage.noted(error)
            return False
        return True


@contextmanager
def pool_reconnects_noted_as(outage: DatabaseOutage) -> Iterator[None]:
    reconnects = _ReconnectAttempts(outage)
    pool_log = logging.getLogger("asyncpg.pool")
    pool_log.addFilter(reconnects)
    try:
        yield
    finally:
        pool_log.removeFilter(reconnects)


def install_database_outage_handler(app: FastAPI, outage: DatabaseOutage) -> None:
    app.state.database_outage = outage
    for error in UNAVAILABLE_ERRORS:
        app.add_exception_handler(error, _unavailable)
