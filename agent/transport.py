"""The one signing request function of the agent (PROTOCOL §5).

Builds the body with instanceId, sentAt and a fresh nonce, serialises it once, signs those exact
bytes, sends them, and trusts an answer only when `x-cp-signature` matches the exact response
bytes and the body echoes the nonce. Nothing the agent acts on bypasses this module.
"""

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from agent.http11 import Answer
from agent.network import ControlPlaneHttp
from contract.signing import sign, verify
from contract.wire import AGENT_SIGNATURE_HEADER, RESPONSE_SIGNATURE_HEADER

M = TypeVar("M", bound=BaseModel)

# Answers that will not change by sending the same request again. Not 401: a skewed clock gets
# fixed and a rotated secret gets installed, and every retry carries a new nonce, so a report
# refused with 401 is retried rather than lost.
FINAL_STATUSES = frozenset({403, 404, 409, 413, 422})
# Built once: `json.dumps` with separators builds an encoder on every call.
_COMPACT = json.JSONEncoder(separators=(",", ":"))


class RequestFailed(Exception):
    """No usable answer. `final`: the control plane (verified) refused for good; `untrusted`: the
    answer failed the signature or nonce check, which callers log loudly; `document`: the
    verified body of a refusal, empty for anything not verified."""

    def __init__(
        self,
        reason: str,
        *,
        status: int | None = None,
        final: bool = False,
        untrusted: bool = False,
        retry_after: float | None = None,
        document: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.final = final
        self.untrusted = untrusted
        self.retry_after = retry_after
        self.document = document or {}  # a refusal's verified body (contract.wire.ReportRefusal)


@dataclass(frozen=True)
class Signer:
    instance_id: str
    secret: str

    def body(self, fields: dict[str, Any]) -> tuple[bytes, str]:
        """The exact bytes to send and the nonce they carry."""
        nonce = secrets.token_urlsafe(24)
        sent_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        document = {**fields, "instanceId": self.instance_id, "sentAt": sent_at, "nonce": nonce}
        return _COMPACT.encode(document).encode(), nonce


def _trusted_document(response: Answer, secret: str, nonce: str) -> dict[str, Any] | None:
    signature = response.headers.get(RESPONSE_SIGNATURE_HEADER, "")
    if not signature or not verify(secret, response.content, signature):
        return None
    try:
        document = json.loads(response.content)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(document, dict) or document.get("nonce") != nonce:
        return None
    return document


def _retry_after(response: Answer) -> float | None:
    """`Retry-After` in seconds; the HTTP-date form is not used by the control plane."""
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None


async def signed_post(
    http: ControlPlaneHttp, signer: Signer, path: str, fields: dict[str, Any], model: type[M]
) -> M:
    """POST a signed request; return the verified answer parsed with `model`, or raise."""
    answer, _ = await signed_exchange(http, signer, path, fields, model)
    return answer


async def signed_exchange(
    http: ControlPlaneHttp,
    signer: Signer,
    path: str,
    fields: dict[str, Any],
    model: type[M],
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> tuple[M, Mapping[str, str]]:
    """`signed_post` with extra request headers (not signed: the signature covers the body, as
    PROTOCOL §5 says) and a timeout of its own; also returns the answer's headers, which are
    not signed either, so nothing read from them may decide what the agent runs."""
    content, nonce = signer.body(fields)
    sent_headers = {
        **(headers or {}),
        "content-type": "application/json",
        AGENT_SIGNATURE_HEADER: sign(signer.secret, content),
    }
    try:
        response = await http.post(path, content, sent_headers, timeout)
    except httpx.HTTPError as exc:
        raise RequestFailed(f"{path}: {type(exc).__name__}: {exc}") from exc
    document = _trusted_document(response, signer.secret, nonce)
    if response.status >= 500:
        # Only ever retried, so it needs no trust; a proxy in front answers these unsigned. Only
        # the control plane's own (signed) answer may say how long to wait.
        raise RequestFailed(
            f"{path}: HTTP {response.status}",
            status=response.status,
            retry_after=_retry_after(response) if document is not None else None,
        )
    if document is None:
        raise RequestFailed(
            f"{path}: HTTP {response.status} answer ignored: bad or missing"
            f" {RESPONSE_SIGNATURE_HEADER} or nonce not echoed (check AGENT_SECRET, and that"
            " CONTROL_PLANE_URL is the real control plane)",
            status=response.status,
            untrusted=True,
        )
    if not response.is_success:
        detail = document.get("detail", "")
        raise RequestFailed(
            f"{path}: HTTP {response.status}: {detail}",
            status=response.status,
            final=response.status in FINAL_STATUSES,
            document=document,
        )
    try:
        return model.model_validate(document), response.headers
    except ValidationError as exc:
        raise RequestFailed(f"{path}: answer does not match the protocol: {exc}") from exc
