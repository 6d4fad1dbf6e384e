"""Agent request authentication and response signing over real HTTP (PROTOCOL §5)."""

import secrets
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from api.app import create_app
from devstack.ports import free_port
from server.settings import ApiSettings
from tests.agent_requests import (
    assert_signed_by,
    body_for,
    now_iso,
    poll_body,
    post_signed,
)
from tests.conftest import LiveServer

OWN_SECRET = secrets.token_hex(16)
FLEET_TOKEN = secrets.token_hex(16)


@pytest.fixture
async def agent_api(settings: ApiSettings) -> AsyncIterator[httpx.AsyncClient]:
    configured = settings.model_copy(
        update={
            "control_plane_agent_secrets": {"web-1": SecretStr(OWN_SECRET)},
            "control_plane_agent_token": SecretStr(FLEET_TOKEN),
        }
    )
    async with (
        LiveServer(create_app(configured), free_port()) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as client,
    ):
        yield client


async def test_idle_poll_is_signed_echoes_nonce_and_registers_the_instance(
    agent_api: httpx.AsyncClient, settings: ApiSettings
) -> None:
    body = poll_body("web-1", version="1.2.0", agentVersion="0.1.0")
    response = await post_signed(agent_api, "/api/updates/next", body, OWN_SECRET)
    assert response.status_code == 200
    assert assert_signed_by(response, OWN_SECRET, body["nonce"]) == {
        "nonce": body["nonce"],
        "job": None,
    }
    token = settings.control_plane_admin_token.get_secret_value()
    listed = await agent_api.get("/api/instances", headers={"x-cp-admin-token": token})
    [instance] = listed.json()
    assert (instance["instanceId"], instance["channel"], instance["currentVersion"]) == (
        "web-1",
        "stable",
        "1.2.0",
    )
    assert instance["agentVersion"] == "0.1.0"


async def test_a_second_poll_updates_the_registry(
    agent_api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    for version in ("1.0.0", "1.1.0"):
        body = poll_body("web-9", version=version, channel="beta")
        assert (await post_signed(agent_api, "/api/updates/next", body, FLEET_TOKEN)).is_success
    row = await db.fetchrow("SELECT channel, current_version FROM instances")
    assert dict(row) == {"channel": "beta", "current_version": "1.1.0"}


async def test_replayed_request_is_401(agent_api: httpx.AsyncClient) -> None:
    body = poll_body("web-1")
    first = await post_signed(agent_api, "/api/updates/next", body, OWN_SECRET)
    replay = await post_signed(agent_api, "/api/updates/next", body, OWN_SECRET)
    assert first.status_code == 200
    assert replay.status_code == 401
    assert "nonce" in assert_signed_by(replay, OWN_SECRET, body["nonce"])["detail"]


@pytest.mark.parametrize("offset", [-330, 330])  # 300 s window, margin for a slow machine
async def test_sent_at_outside_the_window_is_401(agent_api: httpx.AsyncClient, offset: int) -> None:
    body = poll_body("web-1")
    body["sentAt"] = now_iso(offset)
    response = await post_signed(agent_api, "/api/updates/next", body, OWN_SECRET)
    assert response.status_code == 401
    assert "sentAt" in response.json()["detail"]


async def test_wrong_secret_is_401_and_records_nothing(
    agent_api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    response = await post_signed(
        agent_api, "/api/updates/next", poll_body("web-2"), secrets.token_hex(16)
    )
    assert response.status_code == 401
    assert "signature" in response.json()["detail"]
    assert await db.fetchval("SELECT count(*) FROM instances") == 0


async def test_missing_signature_is_401(agent_api: httpx.AsyncClient) -> None:
    response = await agent_api.post("/api/updates/next", json=poll_body("web-2"))
    assert response.status_code == 401
    assert "x-agent-signature" in response.json()["detail"]


async def test_fleet_token_is_refused_for_an_instance_with_its_own_secret(
    agent_api: httpx.AsyncClient,
) -> None:
    refused = await post_signed(agent_api, "/api/updates/next", poll_body("web-1"), FLEET_TOKEN)
    accepted = await post_signed(agent_api, "/api/updates/next", poll_body("web-3"), FLEET_TOKEN)
    assert (refused.status_code, accepted.status_code) == (401, 200)


async def test_without_any_configured_secret_every_agent_is_refused(
    api: LiveServer,
) -> None:
    async with httpx.AsyncClient(base_url=api.url) as client:
        response = await post_signed(
            client, "/api/updates/next", poll_body("web-1"), secrets.token_hex(16)
        )
    assert response.status_code == 401


async def test_body_over_64_kib_is_413(agent_api: httpx.AsyncClient) -> None:
    body = poll_body("web-1", padding="x" * (64 * 1024))
    response = await post_signed(agent_api, "/api/updates/next", body, OWN_SECRET)
    assert response.status_code == 413


async def test_chunked_body_over_64_kib_without_content_length_is_413(
    agent_api: httpx.AsyncClient,
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"instanceId":"web-1","padding":"'
        for _ in range(80):
            yield b"x" * 1024
        yield b'"}'

    response = await agent_api.post(
        "/api/updates/next",
        content=chunks(),
        headers={"content-type": "application/json", "x-agent-signature": "0" * 64},
    )
    assert "content-length" not in response.request.headers
    assert response.status_code == 413


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("nonce", "short"),
        ("sentAt", "2026-11-26T10:00:00"),
        ("sentAt", "2026-11-26T10:00:00+02:00"),
        ("currentVersion", "latest"),
        ("channel", "nightly"),
    ],
)
async def test_malformed_signed_body_is_422_naming_the_field(
    agent_api: httpx.AsyncClient, field: str, value: str
) -> None:
    body = poll_body("web-1")
    body[field] = value
    response = await post_signed(agent_api, "/api/updates/next", body, OWN_SECRET)
    assert response.status_code == 422
    assert field in response.json()["detail"]


async def test_non_json_body_is_422(agent_api: httpx.AsyncClient) -> None:
    response = await post_signed(agent_api, "/api/updates/next", b"not json", OWN_SECRET)
    assert response.status_code == 422


async def test_report_for_unknown_job_is_404_and_signed(agent_api: httpx.AsyncClient) -> None:
    body = body_for("web-1", jobId="no-such-job", status="in_progress", step="backup", message=None)
    response = await post_signed(agent_api, "/api/updates/report", body, OWN_SECRET)
    assert response.status_code == 404
    assert_signed_by(response, OWN_SECRET, body["nonce"])


async def test_report_message_over_4_kib_is_422(agent_api: httpx.AsyncClient) -> None:
    body = body_for("web-1", jobId="j", status="failed", step="smoke", message="é" * 2100)
    response = await post_signed(agent_api, "/api/updates/report", body, OWN_SECRET)
    assert response.status_code == 422
    assert "message" in response.json()["detail"]
