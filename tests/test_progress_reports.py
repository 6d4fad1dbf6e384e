"""Reports that arrive together share one statement (store.jobs.claim_reports,
api.agents.batchers), and each is taken or not exactly as it would be alone: its nonce claimed
or a replay refused, its job read as it was; a started job's new step stored, while another
instance's job, a repeated step, a settled job or a final report (the workflow hears of it
first) is left as it is; and two reports of one job (a retry racing its first attempt) are
taken one after the other."""

import asyncio
import secrets
from datetime import UTC, datetime, timedelta

import asyncpg
from prometheus_client import REGISTRY

from api.agents.batchers import report_batcher
from contract.wire import ReportRequest, ReportStatus, Step
from server.settings import ApiSettings
from store import jobs
from store.pool import connect, open_pool
from tests.test_polls import _job, _open_rollout_with_job


def _report(
    job_id: str,
    instance_id: str,
    step: Step,
    nonce: str | None = None,
    status: ReportStatus = "in_progress",
) -> jobs.SentReport:
    report = ReportRequest(
        instanceId=instance_id,
        sentAt=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        nonce=nonce or secrets.token_hex(16),
        jobId=job_id,
        status=status,
        step=step,
        message=f"{step} on {instance_id}",
    )
    return jobs.SentReport(report, datetime.now(UTC) + timedelta(minutes=5))


async def _steps(db: asyncpg.Connection, job_id: str) -> list[str]:
    rows = await db.fetch("SELECT step FROM job_reports WHERE job_id = $1 ORDER BY id", job_id)
    return [row["step"] for row in rows]


async def test_reports_in_one_statement_are_each_taken_as_they_would_be_alone(
    db: asyncpg.Connection, settings: ApiSettings
) -> None:
    await _open_rollout_with_job(db, settings, "web-0")
    for k in range(1, 5):
        await _job(db, f"j-{k}", f"web-{k}", "in_progress")
    await _job(db, "j-done", "web-5", "succeeded")
    await _job(db, "j-7", "web-7", "in_progress")
    await db.execute("UPDATE update_jobs SET step = 'backup' WHERE id = 'j-3'")
    used = _report("j-4", "web-4", "backup")
    [first] = await jobs.claim_reports(db, [used])
    assert first.fresh and first.stored

    many = [
        _report("j-1", "web-1", "backup"),  # a new step: stored
        _report("j-2", "web-9", "backup"),  # another instance's job: not stored
        _report("j-3", "web-3", "backup"),  # the step it is at already: not stored
        _report("j-4", "web-4", "pull", nonce=used.report.nonce),  # replayed
        _report("j-done", "web-5", "smoke"),  # settled: not stored
        _report("j-1", "web-1", "pull"),  # the same job again: after the first
        _report("j-missing", "web-6", "backup"),  # no such job
        _report("j-7", "web-7", "health", status="succeeded"),  # final: its nonce claimed only
    ]
    outcomes = await jobs.claim_reports(db, many)

    assert [o.fresh for o in outcomes] == [True, True, True, False, True, True, True, True]
    assert [o.stored for o in outcomes] == [True, False, False, False, False, True, False, False]
    # Each is told of its own job as it was before: the caller decides the rest from it.
    assert [o.job.id if o.job else None for o in outcomes] == [
        "j-1",
        "j-2",
        "j-3",
        "j-4",
        "j-done",
        "j-1",
        None,
        "j-7",
    ]
    assert outcomes[0].job is not None and outcomes[0].job.step is None
    assert outcomes[5].job is not None and outcomes[5].job.step == "backup"
    assert await _steps(db, "j-1") == ["backup", "pull"]
    assert await db.fetchval("SELECT step FROM update_jobs WHERE id = 'j-1'") == "pull"
    assert await _steps(db, "j-4") == ["backup"]
    for job_id in ("j-2", "j-3", "j-done", "j-7"):
        assert await _steps(db, job_id) == []
    assert await db.fetchval("SELECT status FROM update_jobs WHERE id = 'j-7'") == "in_progress"


async def test_reports_arriving_together_are_stored_by_one_statement(
    database_url: str, db: asyncpg.Connection, settings: ApiSettings
) -> None:
    await _open_rollout_with_job(db, settings, "web-0")
    for k in range(1, 51):
        await _job(db, f"j-{k}", f"web-{k}", "in_progress")
    statements = _statements()
    pool = await open_pool(database_url)
    try:
        batcher = report_batcher(pool)
        reports = [_report(f"j-{k}", f"web-{k}", "migrate") for k in range(1, 51)]
        outcomes = await asyncio.gather(*(batcher.submit(r) for r in reports))
    finally:
        await pool.close()

    assert all(o.fresh and o.stored for o in outcomes)
    assert await db.fetchval("SELECT count(*) FROM job_reports WHERE step = 'migrate'") == 50
    assert _statements() - statements <= 3  # the first, and what waited for the two in flight


def _statements() -> float:
    return REGISTRY.get_sample_value("rollout_report_batch_size_count") or 0.0


async def test_a_batch_caught_in_a_deadlock_runs_again_and_stores_its_reports(
    database_url: str, db: asyncpg.Connection, settings: ApiSettings
) -> None:
    """Another transaction holds j-2 and then asks for j-1, which the batch locked first: each
    waits for the other. The batch is the one PostgreSQL undoes (it checks first: a shorter
    deadlock_timeout), and it runs again once the other committed."""
    await _open_rollout_with_job(db, settings, "web-0")
    for k in (1, 2):
        await _job(db, f"j-{k}", f"web-{k}", "in_progress")
    other = await connect(database_url)
    batch = await connect(database_url)
    try:
        await other.execute("SET deadlock_timeout = '60s'")
        await batch.execute("SET deadlock_timeout = '100ms'")
        async with other.transaction():
            await other.execute("UPDATE update_jobs SET message = 'held' WHERE id = 'j-2'")
            reports = [_report("j-1", "web-1", "backup"), _report("j-2", "web-2", "backup")]
            storing = asyncio.ensure_future(jobs.claim_reports(batch, reports))
            async with asyncio.timeout(30):
                while not await _waits_for_a_lock(db, batch):
                    await asyncio.sleep(0.01)  # polled: a lock wait has no event to await
                # j-1 is the batch's now: this waits until the batch is undone
                await other.execute("UPDATE update_jobs SET message = 'held' WHERE id = 'j-1'")
        async with asyncio.timeout(30):
            outcomes = await storing
    finally:
        await other.close()
        await batch.close()

    assert [(o.fresh, o.stored) for o in outcomes] == [(True, True), (True, True)]
    assert await _steps(db, "j-1") == ["backup"] and await _steps(db, "j-2") == ["backup"]


async def _waits_for_a_lock(db: asyncpg.Connection, conn: asyncpg.Connection) -> bool:
    pid = conn.get_server_pid()
    wait = await db.fetchval("SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid)
    return bool(wait == "Lock")
