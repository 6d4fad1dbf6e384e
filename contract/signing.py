"""Canonical JSON and HMAC-SHA256 signatures (PROTOCOL §1)."""

import hmac
import json
from typing import Any


def canonical(obj: Any) -> bytes:
    """Sorted keys, no insignificant whitespace, non-ASCII left as is: the bytes that get signed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(secret: str, data: bytes) -> str:
    # The one-shot digest: an HMAC object costs twice the hashing of a poll-sized body.
    return hmac.digest(secret.encode(), data, "sha256").hex()


def verify(secret: str, data: bytes, signature: str) -> bool:
    """Constant-time, so a caller cannot learn a signature byte by byte from response times."""
    return hmac.compare_digest(sign(secret, data), signature)
