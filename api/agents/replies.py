"""Answers to agents: signed with the instance's secret and echoing the request's nonce, for
refusals as for results (PROTOCOL §5).

Apart from api.agents.auth, which checks requests, so that api.errors can sign the errors it
answers to agents without importing the checks that raise them.
"""

from collections.abc import Mapping
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from contract.signing import canonical, sign
from contract.text import storable
from contract.wire import RESPONSE_SIGNATURE_HEADER


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


def remember_reply(request: Request, secret: str, nonce: str) -> None:
    """How to sign an answer to this request, should a later step (the database) fail."""
    request.state.agent_reply = (secret, nonce)


def reply_context(request: Request) -> tuple[str, str] | None:
    context: tuple[str, str] | None = getattr(request.state, "agent_reply", None)
    return context
