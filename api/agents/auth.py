"""Authentication of agent requests (PROTOCOL §5); the answers are signed by api.agents.replies.

Order of checks: size (413, in api.middleware.edge), JSON shape and instanceId (422), signature
(401), the full body (422), sentAt window (401), nonce (401). The signature is checked before the
body is validated in detail, so an unauthenticated caller learns nothing but the documented
shape. An instance with no secret is answered exactly like one with a wrong signature (signed,
with a per-process decoy key), so the answers do not tell an outsider which instance ids exist.
"""

import json
import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from fastapi import Request
from fastapi.responses import Response
from pydantic import ValidationError

from api.agents.replies import AgentError, remember_reply, signed_response
from api.errors import BODY_NOT_JSON, describe_validation_errors
from api.metrics import AUTH_FAILURES
from contract.manifest import SIGNATURE_PATTERN, parse_timestamp
from contract.signing import verify
from contract.wire import (
    AGENT_SIGNATURE_HEADER,
    INSTANCE_ID_PATTERN,
    NONCE_PATTERN,
    SIGNATURE_WINDOW_SECONDS,
    AgentRequest,
)
from server.settings import ApiSettings

log = logging.getLogger(__name__)
_INSTANCE_ID = re.compile(INSTANCE_ID_PATTERN)
_NONCE = re.compile(NONCE_PATTERN)
_SIGNATURE = re.compile(SIGNATURE_PATTERN)
# Signs refusals to unknown instances; verifies nothing (see `authenticated`).
_DECOY_SECRET = secrets.token_hex(32)
_WINDOW = timedelta(seconds=SIGNATURE_WINDOW_SECONDS)


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


def _refuse(reason: str, detail: str, *, secret: str | None, nonce: str | None) -> AgentError:
    AUTH_FAILURES.labels(reason=reason).inc()
    return AgentError(401, detail, secret=secret, nonce=nonce)


T = TypeVar("T", bound=AgentRequest)


@dataclass(frozen=True, slots=True)
class Reply:
    """How an agent's request is answered: signed with its instance's secret, echoing its nonce."""

    secret: str = field(repr=False)
    nonce: str

    def answer(
        self, payload: dict[str, Any], status: int = 200, headers: Mapping[str, str] | None = None
    ) -> Response:
        return signed_response({**payload, "nonce": self.nonce}, self.secret, status, headers)

    def replayed(self) -> AgentError:
        return _refuse(
            "replayed_nonce",
            "nonce already used: every request needs a new nonce",
            secret=self.secret,
            nonce=self.nonce,
        )


@dataclass(frozen=True)
class Verified(Generic[T]):
    """A request whose signature, body and `sentAt` passed; its nonce is not claimed yet."""

    body: T
    secret: str = field(repr=False)
    # Past this moment the request is stale anyway, so its nonce need not be kept longer.
    nonce_expires_at: datetime

    @property
    def reply(self) -> Reply:
        return Reply(self.secret, self.body.nonce)

    def answer(
        self, payload: dict[str, Any], status: int = 200, headers: Mapping[str, str] | None = None
    ) -> Response:
        return self.reply.answer(payload, status, headers)

    def replayed(self) -> AgentError:
        return self.reply.replayed()


async def authenticated(request: Request, model: type[T]) -> Verified[T]:
    """Every check but the nonce's, which the route claims in the same statement as the rest
    of its database work (store.polls, store.jobs.claim_reports).

    Called by the agent routes themselves rather than as a FastAPI dependency: polls are the
    hottest path of the API, and dependency solving cost more than the checks.
    """
    settings: ApiSettings = request.app.state.settings
    raw = await request.body()  # bounded by api.middleware.edge
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
