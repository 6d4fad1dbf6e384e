"""The services' refusals and a Temporal outage, mapped to HTTP once for every route.

An agent's request (its signature checked, see api.agent_auth.remember_reply) gets the answer
signed with its nonce echoed, like every other answer to an agent.
"""

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from api.agent_auth import reply_context, signed_response
from api.errors import RETRY_AFTER_SECONDS
from contract.text import storable
from services.errors import Conflict, Forbidden, Invalid, NotFound, ServiceError
from temporal_client.rollouts import RolloutUnavailable

STATUS: dict[type[ServiceError], int] = {
    NotFound: 404,
    Forbidden: 403,
    Conflict: 409,
    Invalid: 422,
}
# Agents retry on 503 and need no more than this; an operator is told what happened.
AGENT_UNAVAILABLE = "the rollout engine (Temporal) is unavailable; retry later"


def _answer(request: Request, detail: str, status: int) -> Response:
    payload: dict[str, Any] = {"detail": storable(detail)}  # may quote the request
    secret = None
    context = reply_context(request)
    if context is not None:
        secret, payload["nonce"] = context
    return signed_response(payload, secret, status)


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return _answer(request, str(exc), STATUS[type(exc)])


async def _engine_unavailable(request: Request, exc: Exception) -> Response:
    detail = AGENT_UNAVAILABLE if reply_context(request) is not None else str(exc)
    response = _answer(request, detail, 503)
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def install_refusal_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _refused)
    app.add_exception_handler(RolloutUnavailable, _engine_unavailable)
