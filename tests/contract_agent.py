"""An agent written from PROTOCOL.md alone, with the standard library, as a third party writes
one: it polls signed, checks each answer's signature and nonce, "installs" a newer release by
writing it to `<AGENT_STATE_DIR>/current` and reports `succeeded`, refuses one not newer (failed
at preflight, as §6 says). It declares no capability: an agent from before fleet reverts.

    CONTROL_PLANE_URL=... AGENT_INSTANCE_ID=... AGENT_SECRET=... AGENT_CURRENT_VERSION=1.0.0 \\
    AGENT_STATE_DIR=... python tests/contract_agent.py
"""

import hashlib
import hmac
import json
import os
import secrets
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

URL = os.environ["CONTROL_PLANE_URL"]
INSTANCE = os.environ["AGENT_INSTANCE_ID"]
SECRET = os.environ["AGENT_SECRET"].encode()
STATE = Path(os.environ["AGENT_STATE_DIR"])


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("-")[0].split("."))


def _post(path: str, fields: dict) -> dict:
    nonce = secrets.token_hex(16)
    sent_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    body = json.dumps({"instanceId": INSTANCE, "sentAt": sent_at, "nonce": nonce, **fields})
    signature = hmac.new(SECRET, body.encode(), hashlib.sha256).hexdigest()
    request = urllib.request.Request(  # noqa: S310  # CONTROL_PLANE_URL: the test's http URL
        URL + path,
        data=body.encode(),
        headers={"content-type": "application/json", "x-agent-signature": signature},
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        answer = response.read()
        expected = hmac.new(SECRET, answer, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, response.headers["x-cp-signature"]):
            raise RuntimeError("unsigned answer")
    document = json.loads(answer)
    if document.get("nonce") != nonce:
        raise RuntimeError("answer to another request")
    return document


def main() -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    current_file = STATE / "current"
    if not current_file.exists():
        current_file.write_text(os.environ["AGENT_CURRENT_VERSION"])
    done: set[str] = set()
    while True:
        current = current_file.read_text().strip()
        poll = {"channel": "stable", "currentVersion": current, "agentVersion": "0.1.0"}
        job = _post("/api/updates/next", poll)["job"]
        if job is not None and job["id"] not in done:
            done.add(job["id"])
            target = job["manifest"]["version"]
            report = {"jobId": job["id"], "message": None}
            if _version(target) <= _version(current):
                _post("/api/updates/report", {**report, "status": "failed", "step": "preflight"})
                continue
            _post("/api/updates/report", {**report, "status": "in_progress", "step": "preflight"})
            current_file.write_text(target)
            _post("/api/updates/report", {**report, "status": "succeeded", "step": "health"})
        time.sleep(0.2)


if __name__ == "__main__":
    main()
