"""Authentication of agent requests (PROTOCOL §5) and signing of every answer to them.

Order of checks: size (413, in api.edge), JSON shape and instanceId (422), signature (401), the
full body (422), sentAt window (401), nonce (401). The signature is checked before the body is
validated in detail, so an unauthenticated caller learns nothing but the documented shape. An
instance with no secret is answered exactly like one with a wrong signature (signed, with a
per-process decoy key), so the answers do not tell an outsider which instance ids exist.
"""

import json
import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import ValidationError

from api.errors import BODY_NOT_JSON, RETRY_AFTER_SECONDS, describe_validation_errors
from api.metrics import AUTH_FAILURES
from contract.manifest import SIGNATURE_PATTERN, parse_timestamp
from contract.signing import canonical, sign, verify
from contract.text import storable
from contract.wire import (
    AGENT_SIGNATURE_HEADER,
    INSTANCE_ID_PATTERN,
    NONCE_PATTERN,
    RESPONSE_SIGNATURE_HEADER,
    SIGNATURE_WINDOW_SECONDS,
    AgentRequest,
)
from server.settings import ApiSettings
from store import nonces

log = logging.getLogger(__name__)
_INSTANCE_ID = re.compile(INSTANCE_ID_PATTERN)
_NONCE = re.compile(NONCE_PATTERN)
_SIGNATURE = re.compile(SIGNATURE_PATTERN)
# Signs refusals to unknown instances; verifies nothing (see `authenticated`).
_DECOY_SECRET = secrets.token_hex(32)
_WINDOW = timedelta(seconds=SIGNATURE_WINDOW_SECONDS)


class AgentError(Exception):
    """An error answered to an agent: JSON `detail`, signed when the instance's secret is known."""

    def __init__(
        self, status: int, detail: str, *, secret: str | None = None, nonce: str | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = storable(detail)  # may quote the request: must stay encodable
        self.secret = secret
        self.nonce = nonce


def signed_response(
    payload: dict[str, Any],
    secret: str | None,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> Response:
    body = canonical(payload)
    all_headers = dict(headers or {})
    if secret is not None:
        all_headers[RESPONSE_SIGNATURE_HEADER] = sign(secret, body)
    return Response(body, status_code=status, media_type="application/json", headers=all_headers)


def secret_for(settings: ApiSettings, instance_id: str) -> str | None:
    """An instance listed with its own secret is never accepted with the fallback token."""
    own = settings.agent_secret_values.get(instance_id)
    if own is not None:
        return own
    token = settings.control_plane_agent_token
    return token.get_secret_value() if token is not None else None


def _parse(raw: bytes) -> Any:
    """JSON, or a 422: bad UTF-8, bad syntax, 5,000-digit integers and 10,000-deep nesting."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise AgentError(422, BODY_NOT_JSON) from exc


def remember_reply(request: Request, secret: str, nonce: str) -> None:
    """How to sign an answer to this request, should a later step (the database) fail."""
    request.state.agent_reply = (secret, nonce)


def reply_context(request: Request) -> tuple[str, str] | None:
    context: tuple[str, str] | None = getattr(request.state, "agent_reply", None)
    return context


def _refuse(reason: str, detail: str, *, secret: str | None, nonce: str | None) -> AgentError:
    AUTH_FAILURES.labels(reason=reason).inc()
    return AgentError(401, detail, secret=secret, nonce=nonce)


T = TypeVar("T", bound=AgentRequest)


@dataclass(frozen=True)
class Verified(Generic[T]):
    """A request whose signature, body and `sentAt` passed; its nonce is not claimed yet."""

    body: T
    secret: str
    # Past this moment the request is stale anyway, so its nonce need not be kept longer.
    nonce_expires_at: datetime

    def answer(
        self, payload: dict[str, Any], status: int = 200, headers: Mapping[str, str] | None = None
    ) -> Response:
        return signed_response({**payload, "nonce": self.body.nonce}, self.secret, status, headers)

    def replayed(self) -> AgentError:
        return _refuse(
            "replayed_nonce",
            "nonce already used: every request needs a new nonce",
            secret=self.secret,
            nonce=self.body.nonce,
        )


async def authenticated(request: Request, model: type[T]) -> Verified[T]:
    """Every check but the nonce's, which the route claims: a poll claims it in the same
    statement as the rest of its database work (store.polls), anything else with `verified`.

    Called by the agent routes themselves rather than as a FastAPI dependency: polls are the
    hottest path of the API, and dependency solving cost more than the checks.
    """
    settings: ApiSettings = request.app.state.settings
    raw = await request.body()  # bounded by api.edge
    document = _parse(raw)
    if not isinstance(document, dict):
        raise AgentError(422, "body: must be a JSON object")
    instance_id = document.get("instanceId")
    given_nonce = document.get("nonce")
    # Only a well-formed nonce is echoed: anything else may not even be encodable.
    nonce = given_nonce if isinstance(given_nonce, str) and _NONCE.fullmatch(given_nonce) else None
    if not isinstance(instance_id, str) or not _INSTANCE_ID.fullmatch(instance_id):
        raise AgentError(422, "instanceId: 1 to 128 of A-Z a-z 0-9 . _ -", nonce=nonce)
    known_secret = secret_for(settings, instance_id)
    secret = known_secret if known_secret is not None else _DECOY_SECRET
    signature = request.headers.get(AGENT_SIGNATURE_HEADER)
    if not signature:
        raise _refuse(
            "missing_signature",
            f"missing {AGENT_SIGNATURE_HEADER} header",
            secret=secret,
            nonce=nonce,
        )
    # The same work for every caller, known or not: timing tells no more than the answer.
    matches = _SIGNATURE.fullmatch(signature) is not None and verify(secret, raw, signature)
    if known_secret is None or not matches:
        log.warning("agent auth failed: bad signature", extra={"instance_id": instance_id})
        raise _refuse(
            "bad_signature",
            f"{AGENT_SIGNATURE_HEADER} does not match the body"
            " (wrong secret for this instance, or the body changed after signing)",
            secret=secret,
            nonce=nonce,
        )
    try:
        body = model.model_validate(document)
    except ValidationError as exc:
        raise AgentError(
            422, describe_validation_errors(exc.errors()), secret=secret, nonce=nonce
        ) from exc
    remember_reply(request, secret, body.nonce)
    sent_at = parse_timestamp(body.sentAt)
    now = datetime.now(UTC)
    skew = abs((now - sent_at).total_seconds())
    if skew > SIGNATURE_WINDOW_SECONDS:
        raise _refuse(
            "stale",
            f"sentAt is {skew:.0f} s from the server clock (limit"
            f" {SIGNATURE_WINDOW_SECONDS} s): check the host's clock",
            secret=secret,
            nonce=body.nonce,
        )
    return Verified(body=body, secret=secret, nonce_expires_at=max(now, sent_at) + _WINDOW)


async def verified(request: Request, model: type[T]) -> Verified[T]:
    """`authenticated`, and the nonce claimed in the table every API process shares."""
    call = await authenticated(request, model)
    fresh = await nonces.claim(
        request.app.state.pool,
        instance_id=call.body.instanceId,
        nonce=call.body.nonce,
        expires_at=call.nonce_expires_at,
    )
    if not fresh:
        raise call.replayed()
    return call


async def _agent_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, AgentError)
    payload: dict[str, Any] = {"detail": exc.detail}
    if exc.nonce is not None:
        payload["nonce"] = exc.nonce
    response = signed_response(payload, exc.secret, exc.status)
    if exc.status == 503:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def install_agent_error_handler(app: FastAPI) -> None:
    app.add_exception_handler(AgentError, _agent_error)
