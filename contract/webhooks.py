"""Standard Webhooks signatures (https://www.standardwebhooks.com): what a receiver verifies.

A secret is `whsec_` and base64 of 24 random bytes. Each delivery carries `webhook-id` (the same
for every attempt of one message), `webhook-timestamp` (Unix seconds) and `webhook-signature`:
`v1,` and base64 of HMAC-SHA256(key, "<id>.<timestamp>.<body>") with the secret's decoded bytes as
the key.
"""

import base64
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"  # noqa: S105  (the format's prefix, not a secret)


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def verify(secret: str, message_id: str, timestamp: int, body: bytes, header: str) -> bool:
    """Constant-time; the header may carry several space-separated signatures."""
    expected = signature(secret, message_id, timestamp, body)
    return any(hmac.compare_digest(expected, given) for given in header.split())
