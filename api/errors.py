"""Error mapping: every error is JSON with a human-readable `detail` naming what is wrong."""

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from contract.text import storable


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


# How long a client should wait after a 503 (PostgreSQL or Temporal unavailable).
RETRY_AFTER_SECONDS = 5
BODY_NOT_JSON = "body: not valid JSON (bad UTF-8, nested too deep, or a huge number)"


async def _http_error(request: Request, exc: Exception) -> Response:
    """FastAPI answers a body it could not decode with a vague 400; say what is wrong, as 422
    like every other malformed body (agent routes included). Every 503 says when to retry."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, ValueError | RecursionError):
        return JSONResponse(status_code=422, content={"detail": BODY_NOT_JSON})
    response = await http_exception_handler(request, exc)
    if exc.status_code == 503:
        response.headers.setdefault("Retry-After", str(RETRY_AFTER_SECONDS))
    return response


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
