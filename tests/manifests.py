"""Building signed manifests for tests, independently of the code under test where it matters."""

import hashlib
import hmac
import json
from typing import Any


def hand_signed(secret: str, **overrides: Any) -> dict[str, Any]:
    """A manifest signed here with hashlib/hmac, not with contract.signing."""
    body: dict[str, Any] = {
        "version": "1.4.0",
        "sha": "0123456789abcdef0123456789abcdef01234567",
        "channel": "stable",
        "migrations_required": True,
        "breaking_changes": None,
        "released_at": "2026-11-01T12:00:00Z",
    }
    body.update(overrides)
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    body["signature"] = hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()
    return body
