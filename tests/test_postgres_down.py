"""PostgreSQL stopped under a running API: 503 with Retry-After, one log line, recovery, no loss.

The server is this test's own (not the session's shared one), since the test stops it.
"""

import asyncio
import logging
import secrets
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from api.app import create_app
from devstack.ports import free_port
from devstack.postgres import EmbeddedPostgres
from server.settings import ApiSettings
from tests.agent_requests import assert_signed_by, poll_body, post_signed
from tests.conftest import LiveServer
from tests.manifests import hand_signed

AGENT_TOKEN = secrets.token_hex(16)


@pytest.fixture
async def own_postgres() -> AsyncIterator[EmbeddedPostgres]:
    with tempfile.TemporaryDirectory(prefix="rollout-pg-down-") as folder:
        server = EmbeddedPostgres(Path(folder) / "data", free_port(), durable=True)
        await asyncio.to_thread(server.start)
        try:
            yield server
        finally:
            await asyncio.to_thread(server.stop)


@pytest.fixture
def outage_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every warning and error of the process (asyncpg's reconnects included)."""
    caplog.set_level(logging.WARNING)
    return caplog


async def test_api_answers_503_while_postgres_is_down_and_recovers_by_itself(
    own_postgres: EmbeddedPostgres, settings: ApiSettings, outage_log: pytest.LogCaptureFixture
) -> None:
    configured = settings.model_copy(
        update={
            "database_url": own_postgres.dsn,
            "control_plane_agent_token": SecretStr(AGENT_TOKEN),
        }
    )
    admin_token = settings.control_plane_admin_token.get_secret_value()
    signing_secret = settings.control_plane_release_signing_secret.get_secret_value()
    async with (
        LiveServer(create_app(configured), free_port()) as server,
        httpx.AsyncClient(
            base_url=server.url, headers={"x-cp-admin-token": admin_token}, timeout=30
        ) as client,
    ):
        # Acknowledged before the outage.
        stored = await client.post("/api/releases", json=hand_signed(signing_secret))
        assert stored.status_code == 201
        polled = await post_signed(client, "/api/updates/next", poll_body("web-1"), AGENT_TOKEN)
        assert polled.status_code == 200

        await asyncio.to_thread(own_postgres.stop)
        during = []
        another = hand_signed(signing_secret, version="2.0.0")
        for _ in range(3):
            during.append(await client.get("/api/releases"))
            during.append(await client.post("/api/releases", json=another))
            body = poll_body("web-2")
            poll = await post_signed(client, "/api/updates/next", body, AGENT_TOKEN)
            assert assert_signed_by(poll, AGENT_TOKEN, body["nonce"])["detail"]
            during.append(poll)
        for answer in during:
            assert answer.status_code == 503, answer.text
            assert int(answer.headers["retry-after"]) > 0
            assert "PostgreSQL" in answer.json()["detail"]
        assert len(outage_log.records) == 1, outage_log.messages
        assert "unavailable" in outage_log.messages[0]
        assert outage_log.records[0].exc_info is None

        await asyncio.to_thread(own_postgres.start)
        recovered = await _first_success(client)
        assert [r["id"] for r in recovered.json()] == [stored.json()["id"]]
        instances = (await client.get("/api/instances")).json()
        assert [i["instanceId"] for i in instances] == ["web-1"]
        body = poll_body("web-2")
        poll = await post_signed(client, "/api/updates/next", body, AGENT_TOKEN)
        assert poll.status_code == 200
        assert assert_signed_by(poll, AGENT_TOKEN, body["nonce"])["job"] is None
        assert len(outage_log.records) == 2, outage_log.messages
        assert "reachable again" in outage_log.messages[1]


async def _first_success(client: httpx.AsyncClient) -> httpx.Response:
    """Asks as a client honouring Retry-After would, only faster: no 5xx but 503 on the way."""
    for _ in range(600):
        answer = await client.get("/api/releases")
        if answer.status_code == 200:
            return answer
        assert answer.status_code == 503, answer.text
        await asyncio.sleep(0.1)
    raise AssertionError("the API did not recover within 60 s of PostgreSQL's restart")
