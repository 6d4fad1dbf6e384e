"""Signed agent requests built the way a third-party agent would: hmac over the exact bytes."""

import hashlib
import hmac
import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx


def now_iso(offset_seconds: float = 0) -> str:
    moment = datetime.now(UTC) + timedelta(seconds=offset_seconds)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def body_for(instance_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "instanceId": instance_id,
        "sentAt": now_iso(),
        "nonce": secrets.token_hex(16),
        **fields,
    }


def poll_body(instance_id: str, version: str = "1.0.0", channel: str = "stable", **extra: Any):
    return body_for(instance_id, channel=channel, currentVersion=version, **extra)


def hmac_hex(secret: str, data: bytes) -> str:
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


async def post_signed(
    client: httpx.AsyncClient, path: str, body: dict[str, Any] | bytes, secret: str
) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await client.post(
        path,
        content=raw,
        headers={"content-type": "application/json", "x-agent-signature": hmac_hex(secret, raw)},
    )


def assert_signed_by(response: httpx.Response, secret: str, nonce: str | None) -> dict[str, Any]:
    """The control plane's answer verifies with the instance's secret and echoes the nonce."""
    signature = response.headers.get("x-cp-signature", "")
    assert hmac.compare_digest(signature, hmac_hex(secret, response.content)), response.text
    document = response.json()
    assert document.get("nonce") == nonce
    return document
