"""Every error the API answers, mapped once: JSON with a `detail` naming what is wrong.

- a malformed request: 422 naming the field (FastAPI's vague 400 for an undecodable body too);
- an agent's request refused by its checks (api.agents.auth): the status it chose, signed;
- the services' refusals: 404, 403, 409, 422;
- Temporal unavailable: 503 with `Retry-After`;
- PostgreSQL unavailable: 503 with `Retry-After` instead of a traceback per request, and one log
  line when the outage starts and one when it ends.

An agent's request whose signature was checked (api.agents.replies.remember_reply) gets every
answer signed with its nonce echoed, errors included, like any other answer to an agent.
What /openapi.json declares of these answers is api.openapi.
"""

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.routing import Match

from api.agents.replies import AgentError, reply_context, signed_response
from contract.text import storable
from services.errors import Conflict, Forbidden, Invalid, NotFound, Replayed, ServiceError
from temporal_client.rollouts import RolloutUnavailable

log = logging.getLogger(__name__)

# How long a client should wait after a 503 (PostgreSQL or Temporal unavailable).
RETRY_AFTER_SECONDS = 5
BODY_NOT_JSON = "body: not valid JSON (bad UTF-8, nested too deep, or a huge number)"

# --- malformed requests --------------------------------------------------------------------


def _location(error: Any) -> list[str | int]:
    """Where the problem is; a key the caller sent may hold characters JSON cannot encode."""
    return [p if isinstance(p, int) else storable(str(p)) for p in error.get("loc", ())]


def describe_validation_errors(errors: Any) -> str:
    """`body.sha: String should match pattern ...` per problem, joined: readable in a terminal."""
    parts = []
    for error in errors:
        loc = ".".join(str(p) for p in _location(error) if p != "body") or "body"
        msg = storable(str(error.get("msg", "invalid")).removeprefix("Value error, "))
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": _location(e), "msg": storable(str(e.get("msg"))), "type": e.get("type")}
        for e in exc.errors()
    ]
    return JSONResponse(
        status_code=422,
        content={"detail": describe_validation_errors(exc.errors()), "errors": errors},
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    """FastAPI answers a body it could not decode with a vague 400; say what is wrong, as 422
    like every other malformed body (agent routes included). Every 503 says when to retry."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, ValueError | RecursionError):
        return JSONResponse(status_code=422, content={"detail": BODY_NOT_JSON})
    if exc.status_code == 405:
        exc = _method_not_allowed(request)
    response = await http_exception_handler(request, exc)
    if exc.status_code == 503:
        response.headers.setdefault("Retry-After", str(RETRY_AFTER_SECONDS))
    return response


# The methods a 405 may name: those the API serves anywhere.
_SERVED_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def _method_not_allowed(request: Request) -> HTTPException:
    """Starlette's 405 names the methods of the first route on the path only (`POST` on
    /api/rollouts, which GET serves too): name every method some route of the path serves,
    found by asking the app's routes as its router would."""
    probe = {
        "type": "http",
        "path": request.scope["path"],
        "root_path": request.scope.get("root_path", ""),
        "headers": [],
    }
    allowed = [
        method
        for method in _SERVED_METHODS
        if any(
            route.matches({**probe, "method": method})[0] is Match.FULL
            for route in request.app.router.routes
        )
    ]
    listed = ", ".join(allowed)
    return HTTPException(
        405, f"method {request.method} not allowed here; allowed: {listed}", {"Allow": listed}
    )


# --- agents' requests refused by their checks ----------------------------------------------


async def _agent_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, AgentError)
    payload: dict[str, Any] = {"detail": exc.detail}
    if exc.nonce is not None:
        payload["nonce"] = exc.nonce
    response = signed_response(payload, exc.secret, exc.status)
    if exc.status == 503:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


# --- the services' refusals and Temporal unavailable ---------------------------------------

REFUSAL_STATUS: dict[type[ServiceError], int] = {
    NotFound: 404,
    Forbidden: 403,
    Conflict: 409,
    Invalid: 422,
    Replayed: 401,
}
# Agents retry on 503 and need no more than this; an operator is told what happened.
AGENT_UNAVAILABLE = "the rollout engine (Temporal) is unavailable; retry later"


def _answer(
    request: Request, detail: str, status: int, fields: dict[str, Any] | None = None
) -> Response:
    payload: dict[str, Any] = {**(fields or {}), "detail": storable(detail)}  # may quote input
    secret = None
    context = reply_context(request)
    if context is not None:
        secret, payload["nonce"] = context
    return signed_response(payload, secret, status)


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return _answer(request, str(exc), REFUSAL_STATUS[type(exc)], exc.fields)


async def _engine_unavailable(request: Request, exc: Exception) -> Response:
    detail = AGENT_UNAVAILABLE if reply_context(request) is not None else str(exc)
    response = _answer(request, detail, 503)
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


# --- PostgreSQL unavailable ----------------------------------------------------------------
# Every route reads or writes PostgreSQL, so while it is down each request would otherwise end
# in a traceback. The pool reconnects by itself once the server is back.

DATABASE_UNAVAILABLE = "the database (PostgreSQL) is unavailable; retry later"
# How long the check that an outage is over may wait for PostgreSQL's answer.
PROBE_SECONDS = 5.0

# What asyncpg raises when the server is gone, restarting or refusing connections; not what it
# raises for a bad query, which stays a bug to see.
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    OSError,  # refused, reset, timed out while connecting
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.exceptions.OperatorInterventionError,  # 57: admin shutdown, cannot connect now
    asyncpg.exceptions.ConnectionDoesNotExistError,  # the server closed a pooled connection
)


class DatabaseOutage:
    """Notes an outage once when it starts and once when it is over.

    A request answered 2xx during an outage says little: a held poll that waited out its hold
    is answered from memory. So the first success after the outage began only sends one
    `SELECT 1` to PostgreSQL (`pool`, set once it is open), and the outage is over when that
    answers; until then the outage goes on, and one line says so, not one per such answer.
    """

    def __init__(self) -> None:
        self.since: float | None = None
        self.pool: asyncpg.Pool | None = None
        self._probe: asyncio.Task[None] | None = None

    def noted(self, exc: Exception) -> None:
        if self.since is None:
            self.since = time.monotonic()
            log.error("PostgreSQL is unavailable, answering 503 until it is back: %r", exc)

    def over(self) -> None:
        """A request succeeded: make sure PostgreSQL answers again (once at a time)."""
        if self.since is None or self._probe is not None or self.pool is None:
            return
        self._probe = asyncio.get_running_loop().create_task(self._confirm(self.pool))

    async def _confirm(self, pool: asyncpg.Pool) -> None:
        try:
            await pool.fetchval("SELECT 1", timeout=PROBE_SECONDS)
        except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError):
            return  # still out: the next success asks again
        finally:
            self._probe = None
        if self.since is not None:
            log.warning("PostgreSQL is reachable again after %.0f s", time.monotonic() - self.since)
            self.since = None


async def _database_unavailable(request: Request, exc: Exception) -> Response:
    outage: DatabaseOutage = request.app.state.database_outage
    outage.noted(exc)
    response = _answer(request, DATABASE_UNAVAILABLE, 503)
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


def install_error_handlers(app: FastAPI, outage: DatabaseOutage) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(AgentError, _agent_error)
    app.add_exception_handler(ServiceError, _refused)
    app.add_exception_handler(RolloutUnavailable, _engine_unavailable)
    app.state.database_outage = outage
    for error in UNAVAILABLE_ERRORS:
        app.add_exception_handler(error, _database_unavailable)
