"""A rollout's targets are snapshotted once, in PostgreSQL, and read back a batch at a time."""

import asyncio
import uuid

import asyncpg
from temporalio.testing import ActivityEnvironment

from activities.rollouts import RolloutActivities
from domain.rollouts import RolloutSpec
from server.settings import ApiSettings
from store import rollout_targets, rollouts
from tests.fixtures_temporal import eventually, seed_instances, seed_release
from workflows.rollout_models import BatchTargetsInput, SnapshotTargetsInput


async def new_rollout(db: asyncpg.Connection, settings: ApiSettings) -> RolloutSpec:
    spec = RolloutSpec(
        id=uuid.uuid4().hex,
        manifest_id=await seed_release(db, settings),
        version="1.4.0",
        channel="stable",
        batch_size=2,
        created_by="test",
    )
    await rollouts.insert(db, spec)
    return spec


def snapshot_input(spec: RolloutSpec) -> SnapshotTargetsInput:
    return SnapshotTargetsInput(rollout_id=spec.id, channel=spec.channel, version=spec.version)


async def test_a_retried_snapshot_answers_from_the_first_one(
    db: asyncpg.Connection, worker_pool: asyncpg.Pool, settings: ApiSettings
) -> None:
    """A host registered between two attempts does not shift the batches already counted."""
    spec = await new_rollout(db, settings)
    await seed_instances(db, ["b", "a", "c"])
    await seed_instances(db, ["up-to-date"], version="1.4.0")
    await seed_instances(db, ["beta-host"], channel="beta")
    activities = RolloutActivities(worker_pool)
    env = ActivityEnvironment()

    first = await env.run(activities.snapshot_targets, snapshot_input(spec))
    await seed_instances(db, ["aa"])
    again = await env.run(activities.snapshot_targets, snapshot_input(spec))

    assert first.target_count == again.target_count == 3
    batches = [
        await env.run(
            activities.batch_targets, BatchTargetsInput(rollout_id=spec.id, start=start, limit=2)
        )
        for start in (0, 2, 4)
    ]
    assert [b.instance_ids for b in batches] == [["a", "b"], ["c"], []]


async def test_attempts_racing_store_one_snapshot(
    db: asyncpg.Connection, worker_pool: asyncpg.Pool, settings: ApiSettings
) -> None:
    """A timed-out attempt may still run when its retry starts: the targets are stored once."""
    spec = await new_rollout(db, settings)
    hosts = [f"host-{i:04}" for i in range(1_000)]
    await seed_instances(db, hosts)

    async def attempt() -> int:
        async with worker_pool.acquire() as conn:
            return await rollout_targets.snapshot(
                conn, spec.id, channel="stable", versions=["1.3.0"]
            )

    assert await asyncio.gather(*(attempt() for _ in range(4))) == [1_000] * 4
    assert await rollout_targets.slice_of(db, spec.id, start=0, limit=2_000) == hosts
    assert await rollout_targets.count(db, spec.id) == 1_000


async def test_no_targets_is_a_snapshot_of_none(
    db: asyncpg.Connection, worker_pool: asyncpg.Pool, settings: ApiSettings
) -> None:
    spec = await new_rollout(db, settings)
    result = await ActivityEnvironment().run(
        RolloutActivities(worker_pool).snapshot_targets, snapshot_input(spec)
    )
    assert result.target_count == 0
    assert await rollout_targets.slice_of(db, spec.id, start=0, limit=10) == []


async def test_a_snapshot_stored_while_the_rollout_ends_is_dropped_with_it(
    db: asyncpg.Connection, worker_pool: asyncpg.Pool, settings: ApiSettings
) -> None:
    """An abort while the targets are being stored: the end's write waits for the snapshot and
    drops it, and an attempt still running after the end stores nothing."""
    spec = await new_rollout(db, settings)
    await seed_instances(db, ["a", "b"])
    async with worker_pool.acquire() as storing, worker_pool.acquire() as ending:
        stored = storing.transaction()
        await stored.start()
        taken = await rollout_targets.snapshot(
            storing, spec.id, channel="stable", versions=["1.3.0"]
        )
        assert taken == 2

        async def end() -> None:
            async with ending.transaction():
                await ending.execute(
                    "UPDATE rollouts SET status = 'aborted' WHERE id = $1", spec.id
                )
                await rollout_targets.drop(ending, spec.id)

        dropping = asyncio.create_task(end())

        async def waits_for_the_snapshot() -> bool:
            return await db.fetchval(
                "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            )

        await eventually(waits_for_the_snapshot)
        await stored.commit()
        await dropping
    assert await rollout_targets.count(db, spec.id) == 0
    async with worker_pool.acquire() as late:
        assert (
            await rollout_targets.snapshot(late, spec.id, channel="stable", versions=["1.3.0"]) == 0
        )
    assert await rollout_targets.count(db, spec.id) == 0
