"""PostgreSQL stopped under a running API: 503 with Retry-After, one log line, recovery, no loss.

The server is this test's own (not the session's shared one), since the test stops it.
"""

import asyncio
import json
import logging
import os
import secrets
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from api.app import create_app
from contract.long_poll import POLL_WAIT_HEADER
from devstack.ports import free_port
from devstack.postgres import EmbeddedPostgres
from server.settings import ApiSettings
from store.pool import AGENT_STATEMENT_SECONDS
from tests.agent_requests import assert_signed_by, body_for, hmac_hex, poll_body, post_signed
from tests.conftest import LiveServer
from tests.fixtures_temporal import eventually
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


@asynccontextmanager
async def api_on(
    own_postgres: EmbeddedPostgres, settings: ApiSettings
) -> AsyncIterator[httpx.AsyncClient]:
    """The API on `own_postgres`, and an admin client of it."""
    configured = settings.model_copy(
        update={
            "database_url": own_postgres.dsn,
            "control_plane_agent_token": SecretStr(AGENT_TOKEN),
        }
    )
    admin_token = settings.control_plane_admin_token.get_secret_value()
    async with (
        LiveServer(create_app(configured), free_port()) as server,
        httpx.AsyncClient(
            base_url=server.url, headers={"x-cp-admin-token": admin_token}, timeout=30
        ) as client,
    ):
        yield client


async def test_api_answers_503_while_postgres_is_down_and_recovers_by_itself(
    own_postgres: EmbeddedPostgres, settings: ApiSettings, outage_log: pytest.LogCaptureFixture
) -> None:
    signing_secret = settings.control_plane_release_signing_secret.get_secret_value()
    async with api_on(own_postgres, settings) as client:
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
        await over_in_the_log(outage_log)


async def over_in_the_log(outage_log: pytest.LogCaptureFixture) -> None:
    """The outage's second and last line, written once PostgreSQL answered a check."""

    async def two_lines() -> bool:
        return len(outage_log.records) >= 2

    await eventually(two_lines)
    assert len(outage_log.records) == 2, outage_log.messages
    assert "reachable again" in outage_log.messages[1]


async def test_polls_held_through_an_outage_do_not_end_it_in_the_log(
    own_postgres: EmbeddedPostgres, settings: ApiSettings, outage_log: pytest.LogCaptureFixture
) -> None:
    """A held poll that waits out its hold is answered from memory, 200: the outage it spans
    is still one line when it starts and one when PostgreSQL answers again."""
    async with api_on(own_postgres, settings) as client:

        async def held_poll(instance_id: str) -> httpx.Response:
            raw = json.dumps(poll_body(instance_id)).encode()
            headers = {
                "content-type": "application/json",
                "x-agent-signature": hmac_hex(AGENT_TOKEN, raw),
                POLL_WAIT_HEADER: "3",
            }
            return await client.post("/api/updates/next", content=raw, headers=headers)

        holds = [asyncio.create_task(held_poll(f"web-{n}")) for n in (1, 2, 3)]

        async def all_held() -> bool:  # recorded: past their look at the database
            metrics = (await client.get("/metrics")).text
            listed = (await client.get("/api/instances")).json()
            return "\nrollout_held_polls 3.0" in metrics and len(listed) == 3

        await eventually(all_held)
        await asyncio.to_thread(own_postgres.stop)
        assert (await client.get("/api/releases")).status_code == 503
        answered = [await hold for hold in holds]
        assert [a.status_code for a in answered] == [200, 200, 200], [a.text for a in answered]
        assert (await client.get("/api/releases")).status_code == 503
        assert len(outage_log.records) == 1, outage_log.messages
        assert "unavailable" in outage_log.messages[0]

        await asyncio.to_thread(own_postgres.start)
        await _first_success(client)
        await over_in_the_log(outage_log)


async def _first_success(client: httpx.AsyncClient) -> httpx.Response:
    """Asks as a client honouring Retry-After would, only faster: no 5xx but 503 on the way."""
    for _ in range(600):
        answer = await client.get("/api/releases")
        if answer.status_code == 200:
            return answer
        assert answer.status_code == 503, answer.text
        await asyncio.sleep(0.1)
    raise AssertionError("the API did not recover within 60 s of PostgreSQL's restart")


def _postgres_processes(server: EmbeddedPostgres) -> list[int]:
    """The postmaster (from its pid file) and every process it started."""
    postmaster = int((server.data_dir / "postmaster.pid").read_text().split()[0])
    children = [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and _parent(int(entry.name)) == postmaster
    ]
    return [postmaster, *children]


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


async def test_agents_are_answered_503_soon_while_postgres_stalls(
    own_postgres: EmbeddedPostgres, settings: ApiSettings
) -> None:
    """Stopped, not gone (SIGSTOP: a host swapping, a hung disk): agents' requests are answered
    503 within about AGENT_STATEMENT_SECONDS instead of hanging for the pool's 30 s."""
    async with api_on(own_postgres, settings) as client:
        assert (
            await post_signed(client, "/api/updates/next", poll_body("web-1"), AGENT_TOKEN)
        ).status_code == 200
        stopped = _postgres_processes(own_postgres)
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            body = poll_body("web-1")
            poll = await post_signed(client, "/api/updates/next", body, AGENT_TOKEN)
            report = await post_signed(
                client,
                "/api/updates/report",
                body_for("web-1", jobId="j-1", status="in_progress", step="preflight"),
                AGENT_TOKEN,
            )
            waited = time.monotonic() - started
        finally:
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)
        assert (poll.status_code, report.status_code) == (503, 503), (poll.text, report.text)
        assert "PostgreSQL" in assert_signed_by(poll, AGENT_TOKEN, body["nonce"])["detail"]
        assert waited < 2 * AGENT_STATEMENT_SECONDS + 5  # two requests, each bounded
        await _first_success(client)  # back by itself once PostgreSQL runs again
