"""Canonical JSON and HMAC-SHA256 signatures (PROTOCOL §1)."""

import hashlib
import hmac
import json
from typing import Any


def canonical(obj: Any) -> bytes:
    """Sorted keys, no insignificant whitespace, non-ASCII left as is: the bytes that get signed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(secret: str, data: bytes) -> str:
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def verify(secret: str, data: bytes, signature: str) -> bool:
    """Constant-time, so a caller cannot learn a signature byte by byte from response times."""
    return hmac.compare_digest(sign(secret, data), signature)
