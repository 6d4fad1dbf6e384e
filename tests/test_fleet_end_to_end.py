"""End to end: real agent processes running shell steps, the real API, worker, Temporal dev
server and PostgreSQL. What an operator relies on when a fleet updates itself."""

import asyncio
from typing import Any

import asyncpg
import httpx
from pydantic import SecretStr

from api.app import create_app
from devstack.ports import free_port
from server.settings import ApiSettings
from store import instances, jobs
from tests.agent_requests import assert_signed_by, body_for, post_signed
from tests.conftest import LiveServer
from tests.fixtures_agents import AgentFactory
from tests.fixtures_fleet import FLEET_TOKEN, registered, rollout_where, seed_pending_jobs
from tests.fixtures_temporal import eventually, seed_release

STEPS = ["backup", "pull", "migrate", "smoke", "switch"]


async def start_rollout(admin: httpx.AsyncClient, release_id: str, **options: Any) -> dict:
    body = {"manifestId": release_id, "channel": "stable", "batchSize": 2, **options}
    created = await admin.post("/api/rollouts", json=body)
    assert created.status_code == 201, created.text
    return created.json()


def job_of(rollout: dict, instance_id: str) -> dict:
    return next(j for b in rollout["batches"] for j in b["jobs"] if j["instanceId"] == instance_id)


async def test_two_batches_complete_and_every_step_ran_once_in_order(
    plane: LiveServer,
    admin: httpx.AsyncClient,
    agent_host: AgentFactory,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    hosts = [await agent_host(plane.url, FLEET_TOKEN, instance_id=f"web-{n}") for n in (1, 2, 3)]
    await registered(admin, 3)
    release_id = await seed_release(db, dev_settings, version="1.4.0")
    rollout = await start_rollout(admin, release_id)
    rollout = await rollout_where(admin, rollout["id"], lambda r: r["status"] == "awaiting_advance")
    assert {j["instanceId"] for j in rollout["batches"][0]["jobs"]} == {"web-1", "web-2"}
    assert rollout["batches"][1]["jobs"] == []
    assert hosts[2].steps() == []  # batch 2 is not released before the operator advances

    advanced = await admin.post(f"/api/rollouts/{rollout['id']}/advance")
    assert advanced.status_code == 200, advanced.text
    done = await rollout_where(admin, rollout["id"], lambda r: r["status"] == "completed")

    assert done["counts"] == {"succeeded": 3}
    for host in hosts:
        assert host.steps() == [f"{step} 1.4.0" for step in STEPS]
        assert host.state()["current_version"] == "1.4.0"

    async def versions_recorded() -> bool:
        fleet = (await admin.get("/api/instances")).json()
        return {i["currentVersion"] for i in fleet} == {"1.4.0"}

    await eventually(versions_recorded)
    reports = await db.fetch(
        "SELECT status, step FROM job_reports WHERE instance_id = 'web-1' ORDER BY id"
    )
    assert [(r["status"], r["step"]) for r in reports] == [
        ("in_progress", step) for step in ["preflight", *STEPS, "health"]
    ] + [("succeeded", "health")]


async def test_failed_smoke_rolls_back_and_pauses_the_rollout(
    plane: LiveServer,
    admin: httpx.AsyncClient,
    agent_host: AgentFactory,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    # web-1 fails only once web-2 has succeeded: its failure pauses the rollout, which withholds
    # web-2's job if web-2 has not polled for it yet. The test must not hang on which polls first.
    bad = await agent_host(
        plane.url, FLEET_TOKEN, instance_id="web-1", fail_at="smoke", block_at="smoke"
    )
    good = await agent_host(plane.url, FLEET_TOKEN, instance_id="web-2")
    later = await agent_host(plane.url, FLEET_TOKEN, instance_id="web-3")
    await registered(admin, 3)
    release_id = await seed_release(db, dev_settings, version="1.4.0")
    rollout = await start_rollout(admin, release_id)
    await rollout_where(admin, rollout["id"], lambda r: job_of(r, "web-2")["status"] == "succeeded")
    await bad.wait_blocked("smoke")
    bad.open_gate()

    paused = await rollout_where(admin, rollout["id"], lambda r: r["status"] == "paused")
    assert "web-1" in paused["pausedReason"]
    assert job_of(paused, "web-1")["status"] == "rolled_back"
    assert bad.steps() == [f"{s} 1.4.0" for s in ["backup", "pull", "migrate", "smoke", "rollback"]]
    assert bad.state()["current_version"] == "1.0.0"
    assert good.steps()[-1] == "switch 1.4.0"
    assert paused["batches"][1]["jobs"] == [] and later.steps() == []
    refused = await admin.post(f"/api/rollouts/{rollout['id']}/advance")
    assert refused.status_code == 409


async def test_agent_killed_during_migrate_rolls_back_when_it_returns(
    plane: LiveServer,
    admin: httpx.AsyncClient,
    agent_host: AgentFactory,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    host = await agent_host(plane.url, FLEET_TOKEN, instance_id="web-1", block_at="migrate")
    await registered(admin, 1)
    release_id = await seed_release(db, dev_settings, version="1.4.0")
    rollout = await start_rollout(admin, release_id, batchSize=1, maxFailures=1)
    await host.wait_for_step("migrate 1.4.0")
    await host.kill_hard()
    host.open_gate()
    await host.start()

    settled = await rollout_where(
        admin, rollout["id"], lambda r: job_of(r, "web-1")["status"] == "rolled_back"
    )
    assert settled["status"] in ("awaiting_advance", "completed")
    assert host.steps().count("migrate 1.4.0") == 1
    assert host.steps()[-1] == "rollback 1.4.0"


async def test_a_host_that_never_polls_is_unreachable_within_its_limit(
    plane: LiveServer, admin: httpx.AsyncClient, dev_settings: ApiSettings, db: asyncpg.Connection
) -> None:
    await instances.record_poll(
        db, instance_id="ghost", channel="stable", current_version="1.0.0", agent_version=None
    )
    release_id = await seed_release(db, dev_settings, version="1.4.0")
    rollout = await start_rollout(admin, release_id, jobTimeoutSeconds=2, maxUnreachable=1)
    settled = await rollout_where(
        admin, rollout["id"], lambda r: job_of(r, "ghost")["status"] == "unreachable"
    )
    assert settled["status"] == "completed"


async def test_reports_are_checked_against_the_job(
    plane: LiveServer, admin: httpx.AsyncClient, dev_settings: ApiSettings, db: asyncpg.Connection
) -> None:
    async with httpx.AsyncClient(base_url=plane.url, timeout=30) as agent:
        for name in ("web-1", "web-2"):
            poll = body_for(name, channel="stable", currentVersion="1.0.0")
            assert (await post_signed(agent, "/api/updates/next", poll, FLEET_TOKEN)).is_success
        release_id = await seed_release(db, dev_settings, version="1.4.0")
        rollout = await start_rollout(admin, release_id)
        job_id = job_of(rollout, "web-1")["id"]

        poll = body_for("web-1", channel="stable", currentVersion="1.0.0")
        answer = await post_signed(agent, "/api/updates/next", poll, FLEET_TOKEN)
        job = assert_signed_by(answer, FLEET_TOKEN, poll["nonce"])["job"]
        assert (job["id"], job["rolloutId"], job["manifest"]["version"]) == (
            job_id,
            rollout["id"],
            "1.4.0",
        )
        again = await post_signed(
            agent,
            "/api/updates/next",
            body_for("web-1", channel="stable", currentVersion="1.0.0"),
            FLEET_TOKEN,
        )
        assert again.json()["job"]["id"] == job_id  # polling again returns the same job

        def report(instance: str, status: str, step: str | None) -> dict:
            return body_for(instance, jobId=job_id, status=status, step=step, message=None)

        foreign = await post_signed(
            agent, "/api/updates/report", report("web-2", "failed", "backup"), FLEET_TOKEN
        )
        assert foreign.status_code == 403
        done = report("web-1", "succeeded", "health")
        first = await post_signed(agent, "/api/updates/report", done, FLEET_TOKEN)
        assert first.status_code == 200, first.text
        assert assert_signed_by(first, FLEET_TOKEN, done["nonce"])["status"] == "succeeded"
        repeat = await post_signed(
            agent, "/api/updates/report", report("web-1", "succeeded", "health"), FLEET_TOKEN
        )
        assert repeat.status_code == 200
        contradiction = await post_signed(
            agent, "/api/updates/report", report("web-1", "failed", "smoke"), FLEET_TOKEN
        )
        assert contradiction.status_code == 409
        assert "succeeded" in contradiction.json()["detail"]
        stored = await db.fetch("SELECT status FROM job_reports WHERE job_id = $1", job_id)
        assert [r["status"] for r in stored] == ["succeeded"]
        await rollout_where(
            admin, rollout["id"], lambda r: job_of(r, "web-1")["status"] == "succeeded"
        )


async def test_a_paused_rollout_withholds_pending_jobs_at_once(
    plane: LiveServer, admin: httpx.AsyncClient, dev_settings: ApiSettings, db: asyncpg.Connection
) -> None:
    async with httpx.AsyncClient(base_url=plane.url, timeout=30) as agent:
        poll = body_for("web-1", channel="stable", currentVersion="1.0.0")
        assert (await post_signed(agent, "/api/updates/next", poll, FLEET_TOKEN)).is_success
        release_id = await seed_release(db, dev_settings, version="1.4.0")
        rollout = await start_rollout(admin, release_id)
        paused = await admin.post(f"/api/rollouts/{rollout['id']}/pause", json={"reason": "ops"})
        assert paused.status_code == 200
        poll = body_for("web-1", channel="stable", currentVersion="1.0.0")
        withheld = await post_signed(agent, "/api/updates/next", poll, FLEET_TOKEN)
        assert assert_signed_by(withheld, FLEET_TOKEN, poll["nonce"])["job"] is None
        assert (await admin.post(f"/api/rollouts/{rollout['id']}/resume")).status_code == 200
        poll = body_for("web-1", channel="stable", currentVersion="1.0.0")
        handed = await post_signed(agent, "/api/updates/next", poll, FLEET_TOKEN)
        assert handed.json()["job"]["rolloutId"] == rollout["id"]


async def test_while_temporal_is_unreachable_polls_hand_out_jobs_and_reports_answer_503(
    settings: ApiSettings, db: asyncpg.Connection
) -> None:
    await seed_pending_jobs(db, settings, ["web-1"])
    unreachable = settings.model_copy(
        update={
            "control_plane_agent_token": SecretStr(FLEET_TOKEN),
            "temporal_address": f"127.0.0.1:{free_port()}",
        }
    )
    async with (
        LiveServer(create_app(unreachable), free_port()) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as agent,
    ):
        idle = body_for("web-2", channel="stable", currentVersion="1.0.0")
        assert (await post_signed(agent, "/api/updates/next", idle, FLEET_TOKEN)).status_code == 200

        # Polls are answered from the read model: a released job is handed out all the same.
        poll = body_for("web-1", channel="stable", currentVersion="1.0.0")
        answer = await post_signed(agent, "/api/updates/next", poll, FLEET_TOKEN)
        assert answer.status_code == 200, answer.text
        assert assert_signed_by(answer, FLEET_TOKEN, poll["nonce"])["job"]["id"] == "j-web-1"

        started = body_for(
            "web-1", jobId="j-web-1", status="in_progress", step="preflight", message=None
        )
        refused = await post_signed(agent, "/api/updates/report", started, FLEET_TOKEN)
        assert refused.status_code == 503
    # Not acknowledged, so not recorded: the agent retries and nothing is counted twice.
    assert await db.fetchval("SELECT count(*) FROM job_reports") == 0
    assert (await jobs.get(db, "j-web-1")).status == "pending"


async def test_a_whole_batch_polling_together_gets_each_its_own_job(
    plane: LiveServer, admin: httpx.AsyncClient, dev_settings: ApiSettings, db: asyncpg.Connection
) -> None:
    fleet = [f"web-{n:02d}" for n in range(20)]
    async with httpx.AsyncClient(base_url=plane.url, timeout=30) as agent:

        async def poll(name: str) -> dict:
            body = body_for(name, channel="stable", currentVersion="1.0.0")
            answer = await post_signed(agent, "/api/updates/next", body, FLEET_TOKEN)
            return assert_signed_by(answer, FLEET_TOKEN, body["nonce"])

        await asyncio.gather(*(poll(name) for name in fleet))
        release_id = await seed_release(db, dev_settings, version="1.4.0")
        rollout = await start_rollout(admin, release_id, batchSize=20)
        answers = await asyncio.gather(*(poll(name) for name in fleet))

    expected = {job["instanceId"]: job["id"] for job in rollout["batches"][0]["jobs"]}
    assert {name: a["job"]["id"] for name, a in zip(fleet, answers, strict=True)} == expected
