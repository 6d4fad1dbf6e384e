"""Nothing holds a rollout before its first batch: abort works before batch 1, and a fleet whose
target list would not fit in a Temporal payload starts all the same. Real API over HTTP, dev
server, real worker, real PostgreSQL."""

import asyncio

import asyncpg
import httpx
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from benchmarks.targets_100k import seed_fleet
from domain.plans import MAX_BATCH_SIZE
from server.settings import ApiSettings
from store import jobs, rollouts
from store.rollouts import Rollout
from temporal_client import rollouts as rollout_client
from tests.fixtures_temporal import eventually, seed_instances, seed_release
from tests.test_rollout_api import create, finish_batch

FLEET = 100_000  # 39-character ids: 4.2 MB as one list, over Temporal's 2 MiB payload limit


async def final_row(db: asyncpg.Connection, rollout_id: str) -> Rollout:
    async def closed() -> Rollout | None:
        row = await rollouts.get(db, rollout_id)
        return row if row and row.workflow_closed else None

    return await eventually(closed)


async def test_a_fleet_too_large_for_one_payload_starts_at_the_largest_batch(
    dev_worker: Worker,
    dev_admin: httpx.AsyncClient,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    """The targets are snapshotted in PostgreSQL, not carried: 100,000 of them start like 3."""
    release_id = await seed_release(db, dev_settings)
    await seed_fleet(db, FLEET)
    too_large = await create(dev_admin, release_id, batchSize=MAX_BATCH_SIZE + 1)
    assert too_large.status_code == 422 and "batchSize" in too_large.json()["detail"]
    assert await db.fetchval("SELECT count(*) FROM rollouts") == 0

    created = await create(dev_admin, release_id, batchSize=MAX_BATCH_SIZE)
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["status"], body["targetCount"]) == ("running", FLEET)
    assert body["totalBatches"] == FLEET // MAX_BATCH_SIZE
    batch_1 = await jobs.for_rollout(db, body["id"])
    assert len(batch_1) == MAX_BATCH_SIZE
    assert batch_1[0].instance_id == "host-" + "1".zfill(34)
    aborted = await dev_admin.post(f"/api/rollouts/{body['id']}/abort")
    assert aborted.status_code == 200, aborted.text
    row = await final_row(db, body["id"])
    assert (row.status, row.target_count) == ("aborted", FLEET)


async def test_abort_before_batch_1_while_targets_load(
    dev_env: WorkflowEnvironment,
    dev_worker: Worker,
    dev_admin: httpx.AsyncClient,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    release_id = await seed_release(db, dev_settings)
    await seed_instances(db, ["a", "b", "c"])
    blocker = db.transaction()
    await blocker.start()
    await db.execute("LOCK TABLE instances IN ACCESS EXCLUSIVE MODE")  # targets cannot load
    creating = asyncio.create_task(create(dev_admin, release_id))

    async def loading() -> str | None:
        rows = await rollouts.list_all(db, channel="stable")
        if not rows:
            return None
        try:
            described = await dev_env.client.get_workflow_handle(rows[0].workflow_id).describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return None  # the row is written just before the workflow starts
            raise
        pending = [p.activity_type.name for p in described.raw_description.pending_activities]
        return rows[0].id if pending == ["snapshot_targets"] else None

    rollout_id = await eventually(loading)
    aborted = await dev_admin.post(f"/api/rollouts/{rollout_id}/abort", json={"reason": "wrong"})
    assert aborted.status_code == 200, aborted.text
    assert aborted.json()["status"] == "aborted"
    created = await creating  # answers as soon as the rollout ended, not after 30 s
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "aborted"

    await blocker.rollback()  # the targets load now; the abort is not undone
    row = await final_row(db, rollout_id)
    assert (row.status, row.current_batch) == ("aborted", 0)
    assert "aborted before batch 1" in row.details
    assert await jobs.for_rollout(db, rollout_id) == []
    again = await create(dev_admin, release_id)
    assert again.status_code == 201, again.text
    assert again.json()["status"] == "running"


async def test_abort_while_a_batch_is_released_is_not_undone(
    dev_env: WorkflowEnvironment,
    dev_worker: Worker,
    dev_admin: httpx.AsyncClient,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    release_id = await seed_release(db, dev_settings)
    await seed_instances(db, ["a", "b", "c", "d"])
    created = await create(dev_admin, release_id, autoAdvance=True, bakeSeconds=5)
    assert created.status_code == 201, created.text
    rollout = created.json()
    await finish_batch(dev_env, rollout)

    async def baking() -> bool:
        row = await rollouts.get(db, rollout["id"])
        return row is not None and row.status == "awaiting_advance"

    await eventually(baking)
    blocker = db.transaction()
    await blocker.start()
    # Job rows cannot be written (reads still can): batch 2's release waits on its write.
    await db.execute("LOCK TABLE update_jobs IN SHARE MODE")

    async def releasing() -> bool:
        described = await dev_env.client.get_workflow_handle(f"rollout-{rollout['id']}").describe()
        pending = described.raw_description.pending_activities
        live = await rollout_client.live_view(dev_env.client, rollout["id"], timeout=10)
        return (
            live.status == "running"
            and [p.activity_type.name for p in pending] == ["record_progress"]
            and all(job.status == "succeeded" for job in live.jobs)
        )

    await eventually(releasing)
    aborted = await dev_admin.post(f"/api/rollouts/{rollout['id']}/abort", json={"reason": "no"})
    assert aborted.status_code == 200, aborted.text
    assert aborted.json()["status"] == "aborted"
    await blocker.rollback()

    row = await final_row(db, rollout["id"])
    assert (row.status, row.current_batch) == ("aborted", 2)
    stored = {j.instance_id: j.status for j in await jobs.for_rollout(db, rollout["id"])}
    assert stored == {"a": "succeeded", "b": "succeeded", "c": "cancelled", "d": "cancelled"}
    again = await create(dev_admin, release_id)
    assert again.status_code == 201, again.text
