"""update_jobs: one row per job handed to an instance, written by the rollout workflow.

Writes move forward only (pending → in_progress → a terminal status: the guard is rendered
from contract.wire.JOB_GRAPH by store.statuses), so a late or repeated write never undoes a
newer one, whoever wrote it (the workflow's activity or a report).
A job's step is the acknowledged reports' alone: the workflow hears only of a job starting
and ending, so its step is written only where no report has set one.
"""

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

import asyncpg

from contract.wire import (
    CONTROL_PLANE_ENDS,
    JOB_STATUSES,
    MAX_PROGRESS_REPORTS_PER_JOB,
    ReportRequest,
    ReportStatus,
    Step,
)
from domain.jobs import JobWrite
from store import nonces
from store.statuses import OPEN_JOBS, job_moves_forward, sql_list

_COLUMNS = (
    "id, rollout_id, instance_id, batch, attempt, status, step, message, deadline,"
    " created_at, updated_at, host_outcome, host_step, previous_version, previous_release_id,"
    " release_id"
)


class Job(JobWrite):
    created_at: datetime
    updated_at: datetime
    # What its host ended on, reported after the control plane ended the job (cancelled,
    # timed_out, unreachable): `record_host_outcome`. The status stays the control plane's.
    host_outcome: ReportStatus | None = None
    host_step: Step | None = None
    # What its host ran when the job was made, and that version's release on the channel if it
    # was uploaded (migration 0016): what a fleet revert goes back to.
    previous_version: str | None = None
    previous_release_id: str | None = None
    # The release it installs when not its rollout's: a revert's job (store.reverts).
    release_id: str | None = None


def _job(row: asyncpg.Record) -> Job:
    return Job.model_validate(dict(row))


async def upsert_many(conn: asyncpg.Connection | asyncpg.Pool, jobs: Sequence[JobWrite]) -> None:
    if not jobs:
        return
    await conn.execute(
        "INSERT INTO update_jobs AS j"
        " (id, rollout_id, instance_id, batch, attempt, status, step, message, deadline,"
        " previous_version, previous_release_id, release_id)"
        # A revert's job goes down from the reverted release, whatever the host's row still
        # says (a host polls its new version in only after its job ended).
        " SELECT u.*, coalesce(rv.version, i.current_version), coalesce(rv.manifest_id, r.id),"
        " t.release_id FROM unnest($1::text[], $2::text[],"
        " $3::text[], $4::int[], $5::int[], $6::text[], $7::text[], $8::text[], $9::timestamptz[])"
        " AS u (id, rollout_id, instance_id, batch, attempt, status, step, message, deadline)"
        # The host's version as it is now, before its job runs; a new row only (below).
        " LEFT JOIN instances i ON i.instance_id = u.instance_id"
        " LEFT JOIN rollouts ro ON ro.id = u.rollout_id"
        " LEFT JOIN releases r ON r.channel = ro.channel AND r.version = i.current_version"
        " LEFT JOIN revert_targets t ON t.rollout_id = u.rollout_id"
        " AND t.instance_id = u.instance_id"
        " LEFT JOIN rollouts rv ON rv.id = ro.revert_of"
        # Rows locked in the order of their ids, as a batch of reports locks them.
        " ORDER BY u.id"
        " ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status,"
        " step = COALESCE(j.step, EXCLUDED.step),"
        " message = COALESCE(EXCLUDED.message, j.message),"
        " deadline = EXCLUDED.deadline, updated_at = now()"
        f" WHERE {job_moves_forward('j.status', 'EXCLUDED.status')}"
        # A row the agent's report already moved is left alone, not rewritten to the same
        # values: every rewrite is a new row version in each of the table's indexes.
        " AND (j.status IS DISTINCT FROM EXCLUDED.status OR j.deadline IS DISTINCT FROM"
        " EXCLUDED.deadline OR (j.step IS NULL AND EXCLUDED.step IS NOT NULL)"
        " OR (EXCLUDED.message IS NOT NULL AND EXCLUDED.message IS DISTINCT FROM j.message))",
        [j.id for j in jobs],
        [j.rollout_id for j in jobs],
        [j.instance_id for j in jobs],
        [j.batch for j in jobs],
        [j.attempt for j in jobs],
        [j.status for j in jobs],
        [j.step for j in jobs],
        [j.message for j in jobs],
        [j.deadline for j in jobs],
    )


async def cancel_open(conn: asyncpg.Connection | asyncpg.Pool, rollout_id: str) -> int:
    """Cancel the rollout's pending and in-progress jobs (its workflow is gone); their count."""
    status = await conn.execute(
        "UPDATE update_jobs SET status = 'cancelled', updated_at = now()"
        f" WHERE rollout_id = $1 AND status IN {OPEN_JOBS}",
        rollout_id,
    )
    return int(status.split()[-1])


async def get(conn: asyncpg.Connection | asyncpg.Pool, job_id: str) -> Job | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM update_jobs WHERE id = $1", job_id)
    return _job(row) if row else None


class ReportedJob(Job):
    """A job with what its reports fixed: how many it stored (bounded), and whether its final
    one is among them (then its outcome and step never change again)."""

    reports_stored: int
    final_reported: bool


_REPORTED_COLUMNS = f"{_COLUMNS}, reports_stored, final_reported"


def _reported_job(row: asyncpg.Record) -> ReportedJob | None:
    return ReportedJob.model_validate(dict(row)) if row["id"] is not None else None


async def get_reported(conn: asyncpg.Connection | asyncpg.Pool, job_id: str) -> ReportedJob | None:
    row = await conn.fetchrow(f"SELECT {_REPORTED_COLUMNS} FROM update_jobs WHERE id = $1", job_id)
    return _reported_job(row) if row else None


class NonceAndJob(NamedTuple):
    fresh: bool  # False: the nonce was already used by this instance
    job: ReportedJob | None  # as it was before the statement
    stored: bool = False  # the statement also stored the report


# Every report's first round trip claims its nonce and reads its job (the report path is on
# every batch's critical path), and most reports, steps of a job already started, need no more:
# nothing for the workflow to hear of, only a step to store. Such a report is stored by the same
# statement, taken only as `_APPLY_REPORT` would take it and as services.reports would not
# refuse or call a duplicate: an `in_progress` report of the instance's own started job, not
# settled, a new step, below the bound. Any other report is stored by neither, and its caller
# decides from the job read with the nonce's claim. Reports that arrive together share the
# statement (api.agents.batchers), each job and each nonce at most once in it. It locks its
# jobs' rows in the order of their ids first, as `upsert_many` (the worker's writes of many
# jobs) does: in any other order, the two statements could each hold a row the other waits for.
_CLAIM_REPORTS = f"""
WITH sent AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
            $6::timestamptz[], $7::text[])
        WITH ORDINALITY AS s(job_id, step, message, instance_id, nonce, expires_at, status, n)
), claimed AS ({nonces.claim_many("sent")}
), locked AS (
    SELECT id FROM update_jobs WHERE id IN (SELECT job_id FROM sent) ORDER BY id FOR UPDATE
), moved AS (
    UPDATE update_jobs j SET step = COALESCE(s.step, j.step),
        message = COALESCE(s.message, j.message), updated_at = now(),
        reports_stored = j.reports_stored + 1
    FROM locked l JOIN sent s ON s.job_id = l.id JOIN claimed c USING (instance_id, nonce)
    WHERE j.id = l.id AND j.instance_id = s.instance_id AND s.status = 'in_progress'
        AND j.status = 'in_progress' AND NOT j.final_reported AND j.step IS DISTINCT FROM s.step
        AND j.reports_stored < {MAX_PROGRESS_REPORTS_PER_JOB}
    RETURNING j.id
), appended AS (
    INSERT INTO job_reports (job_id, instance_id, status, step, message, nonce)
    SELECT s.job_id, s.instance_id, 'in_progress', s.step, s.message, s.nonce
        FROM sent s JOIN moved m ON m.id = s.job_id
    ORDER BY s.n
)
SELECT c.nonce IS NOT NULL AS fresh, m.id IS NOT NULL AS stored, j.*
    FROM sent s LEFT JOIN claimed c USING (instance_id, nonce)
        LEFT JOIN moved m ON m.id = s.job_id
        LEFT JOIN LATERAL (SELECT {_REPORTED_COLUMNS} FROM update_jobs WHERE id = s.job_id) j
            ON true
    ORDER BY s.n
"""


class SentReport(NamedTuple):
    report: ReportRequest
    nonce_expires_at: datetime


async def claim_reports(
    conn: asyncpg.Connection | asyncpg.Pool, many: Sequence[SentReport]
) -> list[NonceAndJob]:
    """Claims each report's nonce and reads its job as it was, and stores each `in_progress`
    report that is a new step of its instance's started job; one statement for many, the
    outcomes in the order given. A job or a nonce given twice is taken by a statement after the
    one that took it first, as if its reports had come one after the other."""
    first: list[int] = []
    later: list[int] = []
    jobs_taken: set[str] = set()
    nonces_taken: set[tuple[str, str]] = set()
    for k, (report, _) in enumerate(many):
        pair = (report.instanceId, report.nonce)
        if report.jobId in jobs_taken or pair in nonces_taken:
            later.append(k)
            continue
        first.append(k)
        jobs_taken.add(report.jobId)
        nonces_taken.add(pair)
    first.sort(key=lambda k: (many[k].report.instanceId, many[k].report.nonce))
    taken = [many[k] for k in first]
    args = (
        [r.jobId for r, _ in taken],
        [r.step for r, _ in taken],
        [r.message for r, _ in taken],
        [r.instanceId for r, _ in taken],
        [r.nonce for r, _ in taken],
        [expires_at for _, expires_at in taken],
        [r.status for r, _ in taken],
    )
    try:
        rows = await conn.fetch(_CLAIM_REPORTS, *args)
    except asyncpg.DeadlockDetectedError:
        # With a statement that locks a rollout's jobs in another order (`cancel_open`, rare):
        # PostgreSQL undid this one whole, nonces included, so it runs again as if for the first
        # time, and the other has its rows by then.
        rows = await conn.fetch(_CLAIM_REPORTS, *args)
    outcomes: list[NonceAndJob | None] = [None] * len(many)
    for k, row in zip(first, rows, strict=True):
        outcomes[k] = NonceAndJob(fresh=row["fresh"], job=_reported_job(row), stored=row["stored"])
    if later:
        again = await claim_reports(conn, [many[k] for k in later])
        for k, outcome in zip(later, again, strict=True):
            outcomes[k] = outcome
    answered = [outcome for outcome in outcomes if outcome is not None]
    assert len(answered) == len(many)  # each taken by this statement or a later one
    return answered


# The report moves the job and is appended to job_reports in one statement (one round trip, one
# commit): a report is stored by both or by neither. Taken only by a job its final report has
# not settled yet (a job the workflow settled first still takes that report, for the step it
# ended on), and an `in_progress` one only below the bound. The row is read back as it was
# before the statement: when the report was not taken, it says why.
_APPLY_REPORT = f"""
WITH moved AS (
    UPDATE update_jobs SET status = $2, step = COALESCE($3, step),
        message = COALESCE($4, message), updated_at = now(),
        reports_stored = reports_stored + 1, final_reported = $2 <> 'in_progress'
    WHERE id = $1 AND NOT final_reported
        AND (status = $2 OR {job_moves_forward("status", "$2")})
        AND ($2 <> 'in_progress' OR reports_stored < {MAX_PROGRESS_REPORTS_PER_JOB})
    RETURNING 1
), appended AS (
    INSERT INTO job_reports (job_id, instance_id, status, step, message, nonce)
    SELECT $1, $5, $2, $3, $4, $6 FROM moved
)
SELECT EXISTS (SELECT FROM moved) AS stored, {_REPORTED_COLUMNS} FROM update_jobs WHERE id = $1
"""


class Applied(NamedTuple):
    stored: bool  # the job took the report, and job_reports has it
    job: ReportedJob  # as it was before: when not stored, why not


async def apply_report(conn: asyncpg.Connection | asyncpg.Pool, report: ReportRequest) -> Applied:
    """Move the job forward by an agent's report and append the report to job_reports, or
    neither: a report never moves a job its final report settled, never changes its step, and
    past MAX_PROGRESS_REPORTS_PER_JOB an `in_progress` one is not taken. One agreeing with a
    status the workflow wrote first still sets the step it ended on."""
    row = await conn.fetchrow(_APPLY_REPORT, *_report_args(report))
    assert row is not None  # the report's job was read before; jobs are never deleted
    job = _reported_job(row)
    assert job is not None
    return Applied(stored=row["stored"], job=job)


# A final report for a job the control plane ended, which the job did not take (its status is
# the control plane's decision, never rewritten): recorded once as what the host ended on, and
# appended to job_reports for its timeline, in one statement. The first one recorded stays.
_RECORD_HOST_OUTCOME = f"""
WITH recorded AS (
    UPDATE update_jobs SET host_outcome = $2, host_step = $3, updated_at = now()
    WHERE id = $1 AND host_outcome IS NULL AND NOT final_reported
        AND status IN {sql_list(CONTROL_PLANE_ENDS, JOB_STATUSES)}
    RETURNING 1
), appended AS (
    INSERT INTO job_reports (job_id, instance_id, status, step, message, nonce)
    SELECT $1, $5, $2, $3, $4, $6 FROM recorded
)
SELECT EXISTS (SELECT FROM recorded)
"""


async def record_host_outcome(
    conn: asyncpg.Connection | asyncpg.Pool, report: ReportRequest
) -> bool:
    """Record a final report as the host's outcome of a job the control plane ended; False when
    the job has one already (or is not such a job)."""
    return bool(await conn.fetchval(_RECORD_HOST_OUTCOME, *_report_args(report)))


def _report_args(report: ReportRequest) -> tuple[str | None, ...]:
    """$1 to $6 of the statements that store a report."""
    return (
        report.jobId,
        report.status,
        report.step,
        report.message,
        report.instanceId,
        report.nonce,
    )


async def reported_steps(
    conn: asyncpg.Connection | asyncpg.Pool, job_ids: Sequence[str]
) -> dict[str, str]:
    """The step each job last reported, for jobs that reported one."""
    rows = await conn.fetch(
        "SELECT id, step FROM update_jobs WHERE id = ANY($1::text[]) AND step IS NOT NULL",
        list(job_ids),
    )
    return {r["id"]: r["step"] for r in rows}


async def for_rollout(conn: asyncpg.Connection | asyncpg.Pool, rollout_id: str) -> list[Job]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM update_jobs WHERE rollout_id = $1"
        " ORDER BY batch, instance_id, attempt",
        rollout_id,
    )
    return [_job(r) for r in rows]


async def for_batch(
    conn: asyncpg.Connection | asyncpg.Pool, rollout_id: str, batch: int
) -> list[Job]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM update_jobs WHERE rollout_id = $1 AND batch = $2"
        " ORDER BY instance_id, attempt",
        rollout_id,
        batch,
    )
    return [_job(r) for r in rows]


async def latest_counts_before(
    conn: asyncpg.Connection | asyncpg.Pool, rollout_id: str, batch: int
) -> dict[str, int]:
    """Jobs of the batches before `batch` by status, the latest attempt of each instance,
    counted in PostgreSQL: a view of the current batch does not read earlier ones' rows."""
    rows = await conn.fetch(
        "SELECT status, count(*) AS n FROM ("
        " SELECT DISTINCT ON (instance_id) status FROM update_jobs"
        " WHERE rollout_id = $1 AND batch < $2 ORDER BY instance_id, attempt DESC"
        ") AS latest GROUP BY status",
        rollout_id,
        batch,
    )
    return {r["status"]: r["n"] for r in rows}


async def list_filtered(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    status: str | None = None,
    rollout_id: str | None = None,
    instance_id: str | None = None,
    limit: int = 500,
) -> list[Job]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM update_jobs"
        " WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR rollout_id = $2)"
        " AND ($3::text IS NULL OR instance_id = $3)"
        " ORDER BY created_at DESC, id LIMIT $4",
        status,
        rollout_id,
        instance_id,
        limit,
    )
    return [_job(r) for r in rows]


async def count_by_status(conn: asyncpg.Connection | asyncpg.Pool) -> dict[str, int]:
    rows = await conn.fetch("SELECT status, count(*) AS n FROM update_jobs GROUP BY status")
    return {r["status"]: r["n"] for r in rows}
