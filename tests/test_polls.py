"""A poll's single statement (store.polls): the nonce claimed in the shared table, the instance
recorded only for a fresh nonce, `last_seen_at` coalesced, and the open job found."""

import secrets
from datetime import UTC, datetime, timedelta

import asyncpg

from contract.wire import JobStatus
from server.settings import ApiSettings
from store import jobs, polls, rollouts
from store.jobs import JobWrite
from store.rollouts import RolloutSpec
from tests.fixtures_temporal import seed_release


async def _poll(
    conn: asyncpg.Connection,
    instance_id: str = "web-1",
    *,
    nonce: str | None = None,
    version: str = "1.0.0",
    channel: str = "stable",
) -> polls.PollOutcome:
    return await polls.record(
        conn,
        instance_id=instance_id,
        nonce=nonce or secrets.token_hex(16),
        nonce_expires_at=datetime.now(UTC) + timedelta(minutes=5),
        channel=channel,
        current_version=version,
        agent_version="0.1.0",
    )


async def _instance(conn: asyncpg.Connection, instance_id: str = "web-1") -> asyncpg.Record:
    row = await conn.fetchrow(
        "SELECT channel, current_version, last_seen_at FROM instances WHERE instance_id = $1",
        instance_id,
    )
    assert row is not None
    return row


async def test_a_replayed_nonce_is_refused_and_records_nothing(db: asyncpg.Connection) -> None:
    nonce = secrets.token_hex(16)
    assert await _poll(db, nonce=nonce, version="1.0.0") == polls.PollOutcome(True, None)

    replay = await _poll(db, nonce=nonce, version="9.9.9", channel="beta")

    assert not replay.fresh
    assert (await _instance(db))["current_version"] == "1.0.0"
    assert (await _instance(db))["channel"] == "stable"
    # The same nonce from another instance is that instance's own first use.
    assert (await _poll(db, "web-2", nonce=nonce)).fresh
    stored = await db.fetchval("SELECT count(*) FROM agent_nonces WHERE nonce = $1", nonce)
    assert stored == 2


async def test_last_seen_is_coalesced_until_the_resolution_passes_or_something_changes(
    db: asyncpg.Connection,
) -> None:
    await _poll(db)
    first_seen = (await _instance(db))["last_seen_at"]

    await _poll(db)
    assert (await _instance(db))["last_seen_at"] == first_seen

    await _poll(db, version="1.1.0")
    changed = await _instance(db)
    assert changed["current_version"] == "1.1.0"
    assert changed["last_seen_at"] > first_seen

    older = changed["last_seen_at"] - timedelta(seconds=polls.LAST_SEEN_RESOLUTION_SECONDS + 1)
    await db.execute("UPDATE instances SET last_seen_at = $1", older)
    await _poll(db, version="1.1.0")
    assert (await _instance(db))["last_seen_at"] > older


async def _job(conn: asyncpg.Connection, job_id: str, instance_id: str, status: JobStatus) -> None:
    await jobs.upsert_many(
        conn,
        [
            JobWrite(
                id=job_id,
                rollout_id="r1",
                instance_id=instance_id,
                batch=1,
                attempt=1,
                status=status,
                deadline=datetime.now(UTC) + timedelta(hours=1),
            )
        ],
    )


async def test_the_open_job_is_found_and_settled_ones_are_not(
    db: asyncpg.Connection, settings: ApiSettings
) -> None:
    release_id = await seed_release(db, settings)
    spec = RolloutSpec(
        id="r1",
        manifest_id=release_id,
        version="1.4.0",
        channel="stable",
        batch_size=1,
        created_by="admin",
    )
    await rollouts.insert(db, spec)
    await _job(db, "j-pending", "web-1", "pending")
    await _job(db, "j-running", "web-2", "in_progress")
    await _job(db, "j-done", "web-3", "succeeded")

    assert (await _poll(db, "web-1")).open_rollout_id == "r1"
    assert (await _poll(db, "web-2")).open_rollout_id == "r1"
    assert (await _poll(db, "web-3")).open_rollout_id is None
    assert (await _poll(db, "web-4")).open_rollout_id is None
