"""A worker killed with SIGKILL in the middle of a batch, then started again: the rollout carries
on from its history; no job is lost, released twice or handed a new id. Killed in the middle of
a read-model write, it costs the rollout seconds (heartbeat timeout, sticky queue timeout), not
the write's start-to-close."""

import asyncio
import os
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import httpx
from pydantic import SecretStr
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from devstack.ports import free_port
from server.settings import ApiSettings
from store import audit, jobs, rollouts
from store.pool import connect
from temporal_client import rollouts as rollout_client
from tests.agent_requests import body_for, post_signed
from tests.conftest import LiveServer
from tests.fixtures_temporal import eventually, seed_instances, seed_release
from workflows.rollout_models import JobReportSignal

FLEET = ["db-1", "db-2", "db-3", "db-4", "db-5", "db-6"]


@asynccontextmanager
async def worker_process(settings: ApiSettings) -> AsyncIterator[asyncio.subprocess.Process]:
    """`rollout worker` as a real process; the caller may kill it, else it gets SIGTERM."""
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "TEMPORAL_ADDRESS": settings.temporal_address,
        "TEMPORAL_NAMESPACE": settings.temporal_namespace,
        "TEMPORAL_TASK_QUEUE": settings.temporal_task_queue,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.main", "worker", env=env
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), 30) == 0  # graceful shutdown


async def create_rollout(admin: httpx.AsyncClient, release_id: str) -> dict:
    """A rollout of the seeded hosts in batches of 3, as created (batch 1 handed out)."""
    created = await admin.post(
        "/api/rollouts", json={"manifestId": release_id, "channel": "stable", "batchSize": 3}
    )
    assert created.status_code == 201, created.text
    return created.json()


async def report(env: WorkflowEnvironment, rollout_id: str, job: dict, status: str) -> None:
    signal_ = JobReportSignal(
        job_id=job["id"], instance_id=job["instanceId"], status=status, step="migrate"
    )
    await rollout_client.report_job(env.client, rollout_id, signal_, timeout=10)


async def test_rollout_survives_a_killed_worker(
    dev_env: WorkflowEnvironment,
    dev_admin: httpx.AsyncClient,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    release_id = await seed_release(db, dev_settings)
    await seed_instances(db, FLEET)
    async with worker_process(dev_settings) as first:
        rollout = await create_rollout(dev_admin, release_id)
        batch1 = rollout["batches"][0]["jobs"]
        for job in batch1:
            await report(dev_env, rollout["id"], job, "in_progress")
        await report(dev_env, rollout["id"], batch1[0], "succeeded")

        async def first_success_stored() -> bool:
            return (await jobs.get(db, batch1[0]["id"])).status == "succeeded"  # type: ignore[union-attr]

        await eventually(first_success_stored)
        first.kill()
        await first.wait()

    # While no worker runs, reports still reach Temporal and wait in the history.
    for job in batch1[1:]:
        await report(dev_env, rollout["id"], job, "succeeded")
    stale = (await dev_admin.get(f"/api/rollouts/{rollout['id']}")).json()
    assert stale["stale"] is True and stale["currentBatch"] == 1

    async with worker_process(dev_settings):

        async def awaiting() -> dict | None:
            body = (await dev_admin.get(f"/api/rollouts/{rollout['id']}")).json()
            return body if body["status"] == "awaiting_advance" else None

        settled = await eventually(awaiting, timeout=60)
        assert [j["id"] for j in settled["batches"][0]["jobs"]] == [j["id"] for j in batch1]
        advanced = await dev_admin.post(f"/api/rollouts/{rollout['id']}/advance")
        assert advanced.status_code == 200, advanced.text
        for job in advanced.json()["batches"][1]["jobs"]:
            await report(dev_env, rollout["id"], job, "succeeded")

        async def stored_final() -> bool:
            row = await db.fetchrow(
                "SELECT status, workflow_closed FROM rollouts WHERE id = $1", rollout["id"]
            )
            return tuple(row) == ("completed", True)

        await eventually(stored_final, timeout=60)

    stored = await jobs.for_rollout(db, rollout["id"])
    assert sorted(j.instance_id for j in stored) == FLEET  # one job per host, none twice
    assert {j.status for j in stored} == {"succeeded"}
    assert {j.id for j in stored if j.batch == 1} == {j["id"] for j in batch1}
    actions = [e.action for e in await audit.for_subject(db, f"rollout:{rollout['id']}")]
    assert actions.count("rollout.batch_released") == 2
    assert actions.count("rollout.started") == 1


# A worker killed mid-write must cost the rollout seconds: the activity's heartbeat timeout
# (plus the first retry's second, and the new worker's start), not its start-to-close.
KILLED_WRITE_CEILING = 20.0


async def test_a_worker_killed_mid_write_costs_seconds(
    dev_env: WorkflowEnvironment,
    dev_admin: httpx.AsyncClient,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    """The batch's last report settles it; the read-model write that says so is held on a row
    lock while its worker is killed. The next worker writes it within seconds of the kill."""
    release_id = await seed_release(db, dev_settings)
    await seed_instances(db, FLEET)
    locker = await connect(dev_settings.database_url)
    try:
        async with worker_process(dev_settings) as first:
            rollout = await create_rollout(dev_admin, release_id)
            batch1 = rollout["batches"][0]["jobs"]
            hold = locker.transaction()
            await hold.start()
            await locker.execute("SELECT 1 FROM rollouts WHERE id = $1 FOR UPDATE", rollout["id"])
            for job in batch1:
                await report(dev_env, rollout["id"], job, "succeeded")

            async def write_waits_on_the_lock() -> bool:
                return bool(
                    await db.fetchval(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                )

            await eventually(write_waits_on_the_lock)
            first.kill()
            await first.wait()
        killed_at = time.monotonic()
        await hold.rollback()
        async with worker_process(dev_settings):

            async def stored_settled() -> bool:
                row = await rollouts.get(db, rollout["id"])
                return row is not None and row.status == "awaiting_advance"

            await eventually(stored_settled, timeout=90)
            took = time.monotonic() - killed_at
            assert took < KILLED_WRITE_CEILING, f"the write landed {took:.1f} s after the kill"
            advanced = await dev_admin.post(f"/api/rollouts/{rollout['id']}/advance")
            assert advanced.status_code == 200, advanced.text
            print(f"write landed {took:.1f} s after the kill")
    finally:
        await locker.close()


async def test_a_stale_view_counts_the_jobs_its_details_name(
    dev_env: WorkflowEnvironment, dev_settings: ApiSettings, db: asyncpg.Connection
) -> None:
    """With no worker, reports still reach the rows (and Temporal's history): the stored view
    shows them in its counts, and its details line says the same counts, not the last write's."""
    token = secrets.token_hex(16)
    configured = dev_settings.model_copy(update={"control_plane_agent_token": SecretStr(token)})
    admin_token = dev_settings.control_plane_admin_token.get_secret_value()
    release_id = await seed_release(db, dev_settings)
    await seed_instances(db, FLEET[:3])
    async with (
        LiveServer(create_app(configured), free_port()) as api,
        httpx.AsyncClient(
            base_url=api.url, headers={"x-cp-admin-token": admin_token}, timeout=60
        ) as admin,
    ):
        async with worker_process(dev_settings) as worker:
            rollout = await create_rollout(admin, release_id)
            assert rollout["details"] == "batch 1/1 · 3 pending · running"

            async def row_at_batch_1() -> bool:
                # The create answers once batch 1's jobs are written; the rollout's row may be
                # the next write: this test makes that row's view stale, so it waits for it.
                row = await rollouts.get(db, rollout["id"])
                return row is not None and row.current_batch == 1

            await eventually(row_at_batch_1)
            worker.kill()
            await worker.wait()
        job = rollout["batches"][0]["jobs"][0]
        body = body_for(job["instanceId"], jobId=job["id"], status="succeeded", step="health")
        reported = await post_signed(admin, "/api/updates/report", body, token)
        assert reported.status_code == 200, reported.text

        stale = (await admin.get(f"/api/rollouts/{rollout['id']}")).json()
        assert stale["stale"] is True
        assert stale["counts"] == {"succeeded": 1, "pending": 2}
        assert stale["details"] == "batch 1/1 · 1 succeeded · 2 pending · running"
        await dev_env.client.get_workflow_handle(rollout["workflowId"]).terminate("test over")
