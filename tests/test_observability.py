"""What operators watch: Prometheus metrics that count what happened, JSON logs without secrets."""

import asyncio
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from api.app import create_app
from devstack.ports import free_port
from server.settings import ApiSettings
from tests.agent_requests import poll_body, post_signed
from tests.conftest import LiveServer
from tests.fake_control_plane import FakeControlPlane
from tests.fixtures_agents import AgentFactory
from tests.fixtures_fleet import seed_pending_jobs

FLEET_TOKEN = secrets.token_hex(16)


@pytest.fixture
async def plane(settings: ApiSettings) -> AsyncIterator[httpx.AsyncClient]:
    configured = settings.model_copy(update={"control_plane_agent_token": SecretStr(FLEET_TOKEN)})
    async with (
        LiveServer(create_app(configured), free_port()) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as client,
    ):
        yield client


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, frozenset], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_count_polls_auth_failures_latency_and_fleet_state(
    plane: httpx.AsyncClient, settings: ApiSettings, db: asyncpg.Connection
) -> None:
    await seed_pending_jobs(db, settings, ["db-1", "db-2"])
    before = await scrape(plane)

    for n in range(3):
        assert (
            await post_signed(plane, "/api/updates/next", poll_body(f"web-{n}"), FLEET_TOKEN)
        ).is_success
    wrong = await post_signed(
        plane, "/api/updates/next", poll_body("web-0"), "not-the-token-0123456789"
    )
    replayed = poll_body("web-0")
    await post_signed(plane, "/api/updates/next", replayed, FLEET_TOKEN)
    replay = await post_signed(plane, "/api/updates/next", replayed, FLEET_TOKEN)
    assert (wrong.status_code, replay.status_code) == (401, 401)

    after = await scrape(plane)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("rollout_agent_polls_total", outcome="idle") == 4
    assert delta("rollout_agent_auth_failures_total", reason="bad_signature") == 1
    assert delta("rollout_agent_auth_failures_total", reason="replayed_nonce") == 1
    route = {"route": "/api/updates/next", "method": "POST"}
    assert delta("rollout_http_request_duration_seconds_count", **route, status="200") == 4
    assert delta("rollout_http_request_duration_seconds_count", **route, status="401") == 2
    assert value(after, "rollout_jobs", status="pending") == 2
    assert value(after, "rollout_rollouts", status="running") == 1


async def test_json_logs_carry_context_and_never_a_secret(
    database_url: str, settings: ApiSettings
) -> None:
    port = free_port()
    admin_token = settings.control_plane_admin_token.get_secret_value()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CONTROL_PLANE_")},
        "DATABASE_URL": database_url,
        "CONTROL_PLANE_ADMIN_TOKEN": admin_token,
        "CONTROL_PLANE_RELEASE_SIGNING_SECRET": secrets.token_hex(16),
        "CONTROL_PLANE_AGENT_TOKEN": FLEET_TOKEN,
        "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
        "LOG_FORMAT": "json",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        "api",
        "--port",
        str(port),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for _ in range(1200):  # up to a minute: a loaded machine starts processes slowly
                try:
                    await client.get("/version")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("`rollout api` did not answer within a minute")
            bad = poll_body("web-7")
            assert (
                await post_signed(client, "/api/updates/next", bad, admin_token)
            ).status_code == 401
    finally:
        process.terminate()
        _, stderr = await process.communicate()
    lines = stderr.decode().splitlines()
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    refused = [e for e in entries if "bad signature" in e["msg"]]
    assert refused and refused[0]["instance_id"] == "web-7" and refused[0]["level"] == "warning"
    assert any(e["logger"].startswith("uvicorn") for e in entries)
    # One access line for the refused poll, the app's: uvicorn's own access log is off.
    poll_lines = [e for e in entries if "/api/updates/next" in e["msg"]]
    assert [(e["logger"], e["msg"].split(" - ", 1)[1]) for e in poll_lines] == [
        ("api.access", '"POST /api/updates/next HTTP/1.1" 401')
    ]
    for secret in (admin_token, FLEET_TOKEN, env["CONTROL_PLANE_RELEASE_SIGNING_SECRET"]):
        assert secret not in stderr.decode()


async def test_agent_json_logs_name_instance_and_job(
    fake_control_plane: tuple[FakeControlPlane, str], agent_host: AgentFactory
) -> None:
    plane, url = fake_control_plane
    job_id = plane.add_job("host-1", "1.1.0")
    host = await agent_host(url, plane.secret, extra_env={"LOG_FORMAT": "json"})
    await plane.wait_until(lambda: plane.final_report(job_id) is not None)
    await host.kill_hard()
    entries = [json.loads(line) for line in host.log().splitlines()]
    assert entries and all(e["instance_id"] == "host-1" for e in entries if "agent" in e["logger"])
    assert any(e.get("job_id") == job_id for e in entries), entries
    assert plane.secret not in host.log()
