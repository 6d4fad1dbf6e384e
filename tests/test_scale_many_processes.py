"""Two `rollout api` processes (as behind a load balancer) and two `rollout worker` processes on
one PostgreSQL and one Temporal: agents polling either API get every job exactly once, and an
admin action through one API is in effect for polls through the other once it is answered, and
a poll held by one is answered when a job is released through the other."""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

import asyncpg
import httpx
import pytest
from pydantic import SecretStr
from temporalio.testing import WorkflowEnvironment

from contract.long_poll import POLL_WAIT_HEADER
from devstack.ports import free_port
from server.settings import ApiSettings
from tests.agent_requests import assert_signed_by, body_for, hmac_hex, poll_body, post_signed
from tests.control_plane_processes import api_process, process_env, worker_process
from tests.fixtures_agents import AgentFactory
from tests.fixtures_fleet import FLEET_TOKEN, rollout_where
from tests.fixtures_temporal import eventually, seed_release, terminate_rollouts

STEPS = ["backup", "pull", "migrate", "smoke", "switch"]


@dataclass
class TwoOfEach:
    """Admin clients of the two API processes; both workers run behind them."""

    a: httpx.AsyncClient
    b: httpx.AsyncClient


@pytest.fixture
async def two_of_each(
    dev_settings: ApiSettings, dev_env: WorkflowEnvironment, db: asyncpg.Connection
) -> AsyncIterator[TwoOfEach]:
    configured = dev_settings.model_copy(
        update={"control_plane_agent_token": SecretStr(FLEET_TOKEN)}
    )
    env = process_env(configured)
    token = configured.control_plane_admin_token.get_secret_value()
    ports = (free_port(), free_port())
    async with AsyncExitStack() as stack:
        # All four start at once: each is awaited until it logs that it is ready.
        await asyncio.gather(
            *(stack.enter_async_context(api_process(env, port)) for port in ports),
            stack.enter_async_context(worker_process(env)),
            stack.enter_async_context(worker_process(env)),
        )
        a, b = [
            await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{port}",
                    headers={"x-cp-admin-token": token},
                    timeout=60,
                )
            )
            for port in ports
        ]
        try:
            yield TwoOfEach(a, b)
        finally:
            await terminate_rollouts(dev_env.client, db)


async def test_agents_spread_over_two_apis_run_every_job_exactly_once(
    two_of_each: TwoOfEach,
    agent_host: AgentFactory,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    a, b = two_of_each.a, two_of_each.b
    hosts = [
        await agent_host(str(api.base_url), FLEET_TOKEN, instance_id=f"web-{n}")
        for n, api in ((1, a), (2, b))
    ]

    async def both_registered() -> bool:
        return len((await b.get("/api/instances")).json()) == 2

    await eventually(both_registered, timeout=90)  # agent processes start slowly on a busy host
    release_id = await seed_release(db, dev_settings, version="1.4.0")
    created = await a.post(
        "/api/rollouts", json={"manifestId": release_id, "channel": "stable", "batchSize": 1}
    )
    assert created.status_code == 201, created.text
    rollout_id = created.json()["id"]

    await rollout_where(b, rollout_id, lambda r: r["status"] == "awaiting_advance")
    advanced = await b.post(f"/api/rollouts/{rollout_id}/advance")
    assert advanced.status_code == 200, advanced.text
    done = await rollout_where(a, rollout_id, lambda r: r["status"] == "completed")

    assert done["counts"] == {"succeeded": 2}

    async def read_model_settled() -> bool:
        """An API writes a report to PostgreSQL just after signalling it: wait for the write."""
        row = await db.fetchrow(
            "SELECT status, workflow_closed FROM rollouts WHERE id = $1", rollout_id
        )
        unsettled = await db.fetchval(
            "SELECT count(*) FROM update_jobs WHERE rollout_id = $1 AND status <> 'succeeded'",
            rollout_id,
        )
        return tuple(row) == ("completed", True) and unsettled == 0

    await eventually(read_model_settled)
    jobs = await db.fetch(
        "SELECT instance_id, attempt, status FROM update_jobs WHERE rollout_id = $1", rollout_id
    )
    assert sorted((j["instance_id"], j["attempt"], j["status"]) for j in jobs) == [
        (f"web-{n}", 1, "succeeded") for n in (1, 2)
    ]
    for host in hosts:
        assert host.steps() == [f"{step} 1.4.0" for step in STEPS]
        reports = await db.fetch(
            "SELECT status, step FROM job_reports WHERE instance_id = $1 ORDER BY id",
            host.env["AGENT_INSTANCE_ID"],
        )
        assert [(r["status"], r["step"]) for r in reports] == [
            ("in_progress", step) for step in ["preflight", *STEPS, "health"]
        ] + [("succeeded", "health")]


Poll = Callable[[], Awaitable[dict | None]]


def poller(api: httpx.AsyncClient, instance_id: str) -> Poll:
    """A signed poll of `instance_id` through `api`, as its agent sends it; the job or None."""

    async def poll() -> dict | None:
        body = poll_body(instance_id, channel="beta")
        answer = await post_signed(api, "/api/updates/next", body, FLEET_TOKEN)
        assert answer.status_code == 200, answer.text
        job: dict | None = assert_signed_by(answer, FLEET_TOKEN, body["nonce"])["job"]
        return job

    return poll


async def test_pause_and_resume_through_one_api_reach_polls_through_the_other(
    two_of_each: TwoOfEach, dev_settings: ApiSettings, db: asyncpg.Connection
) -> None:
    a, b = two_of_each.a, two_of_each.b
    via_a, via_b = poller(a, "probe-1"), poller(b, "probe-1")
    assert await via_b() is None  # registers the instance on the beta channel
    release_id = await seed_release(db, dev_settings, version="2.0.0", channel="beta")
    created = await a.post(
        "/api/rollouts", json={"manifestId": release_id, "channel": "beta", "batchSize": 1}
    )
    assert created.status_code == 201, created.text
    rollout_id = created.json()["id"]
    job = await eventually(via_b)
    assert job["rolloutId"] == rollout_id
    assert (await via_a() or {}).get("id") == job["id"]  # both APIs hand out the same job

    # An action is answered once the read model shows it, and polls through either API are
    # answered from the read model: the first poll after the answer sees it.
    assert await via_b() is not None
    paused = await a.post(f"/api/rollouts/{rollout_id}/pause", json={"reason": "test"})
    assert paused.status_code == 200, paused.text
    assert await via_b() is None

    assert await via_a() is None
    resumed = await b.post(f"/api/rollouts/{rollout_id}/resume")
    assert resumed.status_code == 200, resumed.text
    assert (await via_a() or {}).get("id") == job["id"]  # the same job: nothing was reissued


async def held_poll(api: httpx.AsyncClient, instance_id: str, action: Awaitable[object]) -> dict:
    """A poll held by `api` while `action` runs: the job it was answered with (a hold that ends
    finds nothing, so a job means the release woke it). Prints how long after the action."""
    body = poll_body(instance_id, channel="beta")
    raw = json.dumps(body).encode()
    headers = {
        "content-type": "application/json",
        "x-agent-signature": hmac_hex(FLEET_TOKEN, raw),
        POLL_WAIT_HEADER: "25",
    }
    held = asyncio.create_task(api.post("/api/updates/next", content=raw, headers=headers))

    async def holding() -> bool:
        return "rollout_held_polls 1.0" in (await api.get("/metrics")).text

    await eventually(holding)
    started = time.monotonic()
    await action
    answer = await held
    print(f"{instance_id} held: job handed out {time.monotonic() - started:.3f} s after the action")
    job: dict | None = assert_signed_by(answer, FLEET_TOKEN, body["nonce"])["job"]
    assert job is not None, f"the hold ended with nothing: the notice did not reach {api.base_url}"
    return job


async def test_polls_held_by_one_api_get_the_jobs_released_through_the_other(
    two_of_each: TwoOfEach, dev_settings: ApiSettings, db: asyncpg.Connection
) -> None:
    """The worker's notice reaches every API process: a poll held by B is answered with its
    job as soon as A creates the rollout, or advances it, not when the hold ends."""
    a, b = two_of_each.a, two_of_each.b
    for probe in ("probe-2", "probe-3"):
        assert await poller(b, probe)() is None  # registers it on the beta channel
    release_id = await seed_release(db, dev_settings, version="2.0.0", channel="beta")
    rollout = {"manifestId": release_id, "channel": "beta", "batchSize": 1}

    first = await held_poll(b, "probe-2", a.post("/api/rollouts", json=rollout))
    report = body_for("probe-2", jobId=first["id"], status="succeeded", step="health", message=None)
    reported = await post_signed(a, "/api/updates/report", report, FLEET_TOKEN)
    assert reported.status_code == 200, reported.text
    rollout_id = first["rolloutId"]
    await rollout_where(a, rollout_id, lambda r: r["status"] == "awaiting_advance")

    second = await held_poll(b, "probe-3", a.post(f"/api/rollouts/{rollout_id}/advance"))
    assert second["rolloutId"] == rollout_id
