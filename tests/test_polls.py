"""A poll's single statement (store.polls): the nonce claimed in the shared table, the instance
recorded only for a fresh nonce, `last_seen_at` coalesced, and the open job found, handed out
only while its rollout hands it out; and polls that arrive together recorded by one statement
(api.agents.batchers), each with its own outcome, polls that will be held waiting a
little for others to share theirs."""

import asyncio
import secrets
from datetime import UTC, datetime, timedelta

import asyncpg
from prometheus_client import REGISTRY

from api.agents.batchers import MAX_IN_FLIGHT, poll_batcher
from contract.wire import JobStatus
from domain.jobs import JobWrite
from domain.rollouts import RolloutSpec
from server.settings import ApiSettings
from store import jobs, polls, rollouts
from store.pool import open_pool
from tests.fixtures_temporal import seed_release


def _polled(
    instance_id: str = "web-1",
    *,
    nonce: str | None = None,
    version: str = "1.0.0",
    channel: str = "stable",
) -> polls.Poll:
    return polls.Poll(
        instance_id=instance_id,
        nonce=nonce or secrets.token_hex(16),
        nonce_expires_at=datetime.now(UTC) + timedelta(minutes=5),
        channel=channel,
        current_version=version,
        agent_version="0.1.0",
    )


async def _poll(
    conn: asyncpg.Connection,
    instance_id: str = "web-1",
    *,
    nonce: str | None = None,
    version: str = "1.0.0",
    channel: str = "stable",
) -> polls.PollOutcome:
    [outcome] = await polls.record_many(
        conn, [_polled(instance_id, nonce=nonce, version=version, channel=channel)]
    )
    return outcome


async def _instance(conn: asyncpg.Connection, instance_id: str = "web-1") -> asyncpg.Record:
    row = await conn.fetchrow(
        "SELECT channel, current_version, last_seen_at FROM instances WHERE instance_id = $1",
        instance_id,
    )
    assert row is not None
    return row


async def test_a_replayed_nonce_is_refused_and_records_nothing(db: asyncpg.Connection) -> None:
    nonce = secrets.token_hex(16)
    assert await _poll(db, nonce=nonce, version="1.0.0") == polls.PollOutcome(fresh=True)

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


def _rollout_of(outcome: polls.PollOutcome) -> str | None:
    """The rollout whose job the poll was handed."""
    handout = outcome.found.handout
    return handout.rollout_id if handout else None


async def _job(
    conn: asyncpg.Connection,
    job_id: str,
    instance_id: str,
    status: JobStatus,
    deadline: datetime | None = None,
) -> None:
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
                deadline=deadline or datetime.now(UTC) + timedelta(hours=1),
            )
        ],
    )


async def _open_rollout_with_job(
    db: asyncpg.Connection, settings: ApiSettings, instance_id: str
) -> None:
    """Rollout r1, with a pending job for `instance_id`."""
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
    await _job(db, "j-pending", instance_id, "pending")


async def test_the_open_job_is_found_and_settled_ones_are_not(
    db: asyncpg.Connection, settings: ApiSettings
) -> None:
    await _open_rollout_with_job(db, settings, "web-1")
    await _job(db, "j-running", "web-2", "in_progress")
    await _job(db, "j-done", "web-3", "succeeded")

    handed = await _poll(db, "web-1")
    assert handed.found.handout is not None
    assert handed.found.handout.job_id == "j-pending"
    assert handed.found.handout.release.id == await db.fetchval(
        "SELECT manifest_id FROM rollouts WHERE id = 'r1'"
    )
    assert _rollout_of(await _poll(db, "web-2")) == "r1"
    for settled_or_none in ("web-3", "web-4"):
        assert (await _poll(db, settled_or_none)).found == polls.Found()


async def test_an_open_job_is_withheld_while_paused_after_its_deadline_and_once_finished(
    db: asyncpg.Connection, settings: ApiSettings
) -> None:
    """What the workflow's `handouts` says, read from the rows it wrote: polls never wait on
    the workflow, which answers queries slowly while it takes in a batch's reports."""
    await _open_rollout_with_job(db, settings, "web-1")
    await _job(db, "j-overdue", "web-2", "pending", datetime.now(UTC) - timedelta(seconds=1))
    assert _rollout_of(await _poll(db, "web-1")) == "r1"
    assert (await _poll(db, "web-2")).found == polls.Found(withheld=True)

    for status in ("paused", "completed", "aborted"):
        await db.execute("UPDATE rollouts SET status = $1 WHERE id = 'r1'", status)
        assert (await _poll(db, "web-1")).found == polls.Found(withheld=True), status
        assert (await polls.find_many(db, ["web-1"])) == [polls.Found(withheld=True)], status

    await db.execute("UPDATE rollouts SET status = 'running' WHERE id = 'r1'")
    # held polls' looks, as their first: in the order asked, one with nothing open
    found, nothing = await polls.find_many(db, ["web-1", "web-9"])
    assert found.handout is not None and found.handout.job_id == "j-pending"
    assert nothing == polls.Found()
    assert _rollout_of(await _poll(db, "web-1")) == "r1"
    await db.execute("UPDATE rollouts SET workflow_closed = true WHERE id = 'r1'")
    assert (await _poll(db, "web-1")).found == polls.Found(withheld=True)


async def test_one_statement_gives_each_poll_its_own_outcome_in_order(
    db: asyncpg.Connection, settings: ApiSettings
) -> None:
    await _open_rollout_with_job(db, settings, "web-2")
    claimed_before = _polled("web-3")
    await polls.record_many(db, [claimed_before])
    twice = secrets.token_hex(16)
    batch = [
        _polled("web-9", version="1.0.0"),
        _polled("web-2"),
        _polled("web-1", nonce=twice, version="1.1.0"),
        claimed_before,  # a replay of a nonce claimed by an earlier statement
        _polled("web-1", nonce=twice, version="6.6.6"),  # the same nonce again: a replay
        _polled("web-9", version="1.2.0"),  # the same instance, another nonce: its own poll
    ]

    outcomes = await polls.record_many(db, batch)

    assert [o.fresh for o in outcomes] == [True, True, True, False, False, True]
    assert [_rollout_of(o) for o in outcomes[:3]] == [None, "r1", None]
    assert [o.found for o in outcomes[3:5]] == [polls.Found()] * 2  # replays: nothing looked up
    assert (await _instance(db, "web-1"))["current_version"] == "1.1.0"
    assert (await _instance(db, "web-9"))["current_version"] == "1.2.0"  # the later of the two
    stored = await db.fetchval("SELECT count(*) FROM agent_nonces")
    assert stored == 5  # web-3's once, web-1's once, and web-2's and web-9's two


async def test_polls_arriving_together_share_statements_and_each_gets_its_answer(
    database_url: str, db: asyncpg.Connection, settings: ApiSettings
) -> None:
    await _open_rollout_with_job(db, settings, "web-7")
    replayed = _polled("web-0")
    await polls.record_many(db, [replayed])
    statements = _sample("rollout_poll_batch_size_count")
    pool = await open_pool(database_url)
    try:
        batcher = poll_batcher(pool)
        many = [_polled(f"web-{k}") for k in range(1, 101)] + [replayed]
        outcomes = await asyncio.gather(*(batcher.submit(p) for p in many))
    finally:
        await pool.close()

    assert [o.fresh for o in outcomes] == [True] * 100 + [False]
    assert [k for k, o in enumerate(outcomes, 1) if _rollout_of(o) == "r1"] == [7]
    assert await db.fetchval("SELECT count(*) FROM instances") == 101
    # 101 polls in at most MAX_IN_FLIGHT + 1 statements: the first, and what waited for it.
    assert _sample("rollout_poll_batch_size_count") - statements <= MAX_IN_FLIGHT + 1


async def test_patient_polls_arriving_one_by_one_share_a_statement_an_impatient_one_sends(
    database_url: str,
) -> None:
    """Polls that will be held wait for company, here longer than the test could wait, so only
    the impatient poll that comes last sends them: all in its statement."""
    statements = _sample("rollout_poll_batch_size_count")
    recorded = _sample("rollout_poll_batch_size_sum")
    pool = await open_pool(database_url)
    try:
        batcher = poll_batcher(pool)
        batcher.gather_seconds = 3600.0
        patient = []
        for k in range(1, 6):  # each in a loop turn of its own, as a trickle of polls is
            patient.append(asyncio.ensure_future(batcher.submit(_polled(f"web-{k}"), patient=True)))
            await asyncio.sleep(0)
        assert not any(p.done() for p in patient)
        async with asyncio.timeout(30):
            impatient = await batcher.submit(_polled("web-6"))
            gathered = await asyncio.gather(*patient)
    finally:
        await pool.close()

    assert impatient.fresh and all(o.fresh for o in gathered)
    assert _sample("rollout_poll_batch_size_count") - statements == 1
    assert _sample("rollout_poll_batch_size_sum") - recorded == 6


async def test_a_patient_poll_alone_goes_out_once_it_waited_the_gathering_time(
    database_url: str,
) -> None:
    pool = await open_pool(database_url)
    try:
        batcher = poll_batcher(pool)
        async with asyncio.timeout(30):
            outcome = await batcher.submit(_polled("web-1"), patient=True)
    finally:
        await pool.close()

    assert outcome.fresh and outcome.state == "active"


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0
