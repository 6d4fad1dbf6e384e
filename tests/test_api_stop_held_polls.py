"""Stopping `rollout api` answers its held polls at once (cli/api.py): a SIGTERM does not wait
for holds to run out, and the held agent gets the usual signed answer, `"job": null`."""

import asyncio
import json
import signal
import time

import httpx
import pytest
from pydantic import SecretStr

from contract.long_poll import POLL_WAIT_HEADER
from devstack.ports import free_port
from server.settings import ApiSettings
from tests.agent_requests import assert_signed_by, hmac_hex, poll_body
from tests.control_plane_processes import api_process, process_env
from tests.fixtures_temporal import eventually

TOKEN = "stop-fleet-token-0123456789abcdef"
HOLD_SECONDS = 120  # far longer than stopping may take: a stop that waited for it would show


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_answers_held_polls_at_once(settings: ApiSettings, workers: int) -> None:
    configured = settings.model_copy(update={"control_plane_agent_token": SecretStr(TOKEN)})
    env = process_env(configured, LONG_POLL_MAX_SECONDS=str(HOLD_SECONDS))
    port = free_port()
    body = poll_body("web-1")
    raw = json.dumps(body).encode()
    headers = {
        "content-type": "application/json",
        "x-agent-signature": hmac_hex(TOKEN, raw),
        POLL_WAIT_HEADER: str(HOLD_SECONDS),
    }
    async with (
        api_process(env, port, workers=workers) as api,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=HOLD_SECONDS * 2) as http,
    ):
        held = asyncio.create_task(http.post("/api/updates/next", content=raw, headers=headers))

        async def holding() -> bool:
            metrics = (await http.get("/metrics")).text
            return "\nrollout_held_polls 1.0" in metrics

        await eventually(holding)
        stopped_at = time.monotonic()
        api.process.send_signal(signal.SIGTERM)
        answer = await held
        answered_after = time.monotonic() - stopped_at
        status = await api.process.wait()
        exited_after = time.monotonic() - stopped_at

    assert answer.status_code == 200, answer.text
    assert assert_signed_by(answer, TOKEN, body["nonce"])["job"] is None
    assert status in (0, -signal.SIGTERM), api.log()
    print(f"after SIGTERM: held poll answered {answered_after:.2f} s, exit {exited_after:.2f} s")
    assert exited_after < HOLD_SECONDS / 4, api.log()
