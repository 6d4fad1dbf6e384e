"""Schemathesis hooks (SCHEMATHESIS_HOOKS=tests.schemathesis_hooks): sign agent bodies as agents do.

Without a valid signature every generated agent request would stop at the 401, and the fuzzer
would never reach the body validation and handlers behind it. Each JSON object body of an agent
route gets a fresh `sentAt` and `nonce` (both tested by hand elsewhere), is written to bytes
here and signed over exactly those bytes with the fleet token from `FUZZ_AGENT_TOKEN`.
"""

import json
import os
import secrets
from typing import Any

import schemathesis

from tests.agent_requests import hmac_hex, now_iso

AGENT_PATHS = ("/api/updates/next", "/api/updates/report")


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    if case.path not in AGENT_PATHS:
        return
    body = case.body
    if isinstance(body, dict):
        body = {**body, "sentAt": now_iso(), "nonce": secrets.token_hex(16)}
    try:
        raw = json.dumps(body).encode()
    except (TypeError, ValueError):
        return  # not JSON at all: sent as generated, unsigned
    kwargs["data"] = raw
    case.headers = {
        **(case.headers or {}),
        "content-type": "application/json",
        "x-agent-signature": hmac_hex(os.environ["FUZZ_AGENT_TOKEN"], raw),
    }
