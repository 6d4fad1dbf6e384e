"""Where a batch's time goes, from what the control plane stored (plus the simulator's handouts).

Per batch: released (its job rows inserted: update_jobs.created_at) → first handout (not
stored: the simulator's first poll that got a job of the batch) → last terminal report
(job_reports.received_at) → settled (the audit row that moves the rollout off `running` for
this batch) → next release (the next batch's rows). With `bakeSeconds` 0 the workflow settles a
batch and releases the next in one task and writes both together, so settled and next release
coincide: the whole turnaround then shows as "last report → settled".

Read-only SQL over several tables for a benchmark; the application's SQL stays in store/.
"""

from collections.abc import Mapping
from datetime import datetime

import asyncpg
from pydantic import BaseModel

from simulator.figures import BatchFigures

TERMINAL_REPORTS = ["succeeded", "failed", "rolled_back", "rollback_failed"]
# A status the rollout takes when the current batch is done with (or stops it).
SETTLED_STATUSES = frozenset({"awaiting_advance", "completed", "paused", "aborted"})

_JOBS = (
    "SELECT batch, count(*) AS jobs, min(created_at) AS released_at FROM update_jobs"
    " WHERE rollout_id = $1 AND attempt = 1 GROUP BY batch ORDER BY batch"
)
_REPORTS = (
    "SELECT j.batch, min(r.received_at) AS first_report_at,"
    " max(r.received_at) FILTER (WHERE r.status = ANY($2::text[])) AS last_terminal_report_at"
    " FROM job_reports r JOIN update_jobs j ON j.id = r.job_id"
    " WHERE j.rollout_id = $1 GROUP BY j.batch"
)
# Each batch's slowest job, from its first report to its last: the agents' own work, which no
# control plane can shorten (a batch takes at least as long as its slowest job); its median
# job, which tells a batch whose every job is slower from one with a slow tail; and its last
# job to start (its first report), which tells a late handout from a slow job.
_SLOWEST = (
    "SELECT batch, extract(epoch FROM max(span)) AS seconds,"
    " extract(epoch FROM percentile_cont(0.5) WITHIN GROUP (ORDER BY span)) AS median,"
    " max(started_at) AS last_started_at FROM ("
    " SELECT j.batch, max(r.received_at) - min(r.received_at) AS span,"
    " min(r.received_at) AS started_at"
    " FROM job_reports r JOIN update_jobs j ON j.id = r.job_id"
    " WHERE j.rollout_id = $1 GROUP BY j.batch, j.id) AS jobs GROUP BY batch"
)
_AUDIT = (
    "SELECT at, action, detail FROM audit_log WHERE subject = $1"
    " AND action IN ('rollout.batch_released', 'rollout.status_changed') ORDER BY id"
)
_ROLLOUT = "SELECT created_at, finished_at FROM rollouts WHERE id = $1"


class BatchPhases(BaseModel):
    batch: int
    jobs: int
    released_at: datetime
    first_handout_at: datetime | None
    last_handout_at: datetime | None = None
    first_report_at: datetime | None
    last_terminal_report_at: datetime | None
    settled_at: datetime | None
    next_release_at: datetime | None
    slowest_job_seconds: float | None = None
    median_job_seconds: float | None = None
    # The first report of the batch's last job to report at all.
    last_job_started_at: datetime | None = None


class RolloutPhases(BaseModel):
    rollout_id: str
    created_at: datetime
    finished_at: datetime | None
    batches: list[BatchPhases]

    @property
    def control_plane_seconds(self) -> float:
        """Per batch, release to first handout and last report to the next release (or the
        end): the time the control plane adds between its agents' work."""
        total = 0.0
        for b in self.batches:
            end = b.next_release_at or self.finished_at
            if b.first_handout_at is not None:
                total += (b.first_handout_at - b.released_at).total_seconds()
            if b.last_terminal_report_at is not None and end is not None:
                total += (end - b.last_terminal_report_at).total_seconds()
        return total

    @property
    def agents_work_seconds(self) -> float:
        """The sum of each batch's slowest job: the rollout's wall time with no overhead."""
        return sum(b.slowest_job_seconds or 0.0 for b in self.batches)


def _settled_by_batch(audit: list[asyncpg.Record]) -> dict[int, datetime]:
    """Audit rows in write order: a status change after batch N's release belongs to batch N."""
    settled: dict[int, datetime] = {}
    current: int | None = None
    for row in audit:
        detail = row["detail"]
        if row["action"] == "rollout.batch_released":
            current = int(detail["batch"])
        elif current is not None and detail.get("to") in SETTLED_STATUSES:
            settled.setdefault(current, row["at"])
    return settled


async def rollout_phases(
    conn: asyncpg.Connection, rollout_id: str, simulated: Mapping[int, BatchFigures]
) -> RolloutPhases:
    """`simulated`: batch number → the simulator's figures of it (its handouts)."""
    rollout = await conn.fetchrow(_ROLLOUT, rollout_id)
    if rollout is None:
        raise ValueError(f"no rollout {rollout_id} in the database")
    jobs = await conn.fetch(_JOBS, rollout_id)
    reports = {r["batch"]: r for r in await conn.fetch(_REPORTS, rollout_id, TERMINAL_REPORTS)}
    settled = _settled_by_batch(await conn.fetch(_AUDIT, f"rollout:{rollout_id}"))
    spans = {r["batch"]: r for r in await conn.fetch(_SLOWEST, rollout_id)}
    releases = {r["batch"]: r["released_at"] for r in jobs}
    batches = []
    for row in jobs:
        number = row["batch"]
        report = reports.get(number)
        next_release = releases.get(number + 1)
        settled_at = settled.get(number)
        handouts = simulated.get(number)
        if settled_at is not None and next_release is not None:
            # Written with the next release (bakeSeconds 0), perhaps in its last chunk.
            settled_at = min(settled_at, next_release)
        batches.append(
            BatchPhases(
                batch=number,
                jobs=row["jobs"],
                released_at=row["released_at"],
                first_handout_at=handouts.first_handout_at if handouts else None,
                last_handout_at=handouts.last_handout_at if handouts else None,
                first_report_at=report["first_report_at"] if report else None,
                last_terminal_report_at=report["last_terminal_report_at"] if report else None,
                settled_at=settled_at,
                next_release_at=next_release,
                slowest_job_seconds=float(spans[number]["seconds"]) if number in spans else None,
                median_job_seconds=float(spans[number]["median"]) if number in spans else None,
                last_job_started_at=spans[number]["last_started_at"] if number in spans else None,
            )
        )
    return RolloutPhases(
        rollout_id=rollout_id,
        created_at=rollout["created_at"],
        finished_at=rollout["finished_at"],
        batches=batches,
    )


def _span(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "-"
    return f"{(end - start).total_seconds():.2f}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(phases: RolloutPhases) -> str:
    lines = [
        f"rollout {phases.rollout_id}: seconds per phase of each batch"
        " (released = offset from the rollout's creation)",
        f"{'batch':>5} {'jobs':>5} {'released':>9} {'→handout':>9} {'→last report':>13}"
        f" {'→settled':>9} {'→next release':>14} {'total':>7} {'job p50':>8} {'slowest':>8}"
        f" {'last handout':>13} {'last start':>11}",
    ]
    for b in phases.batches:
        end = b.next_release_at or b.settled_at
        lines.append(
            f"{b.batch:>5} {b.jobs:>5} {'+' + _span(phases.created_at, b.released_at):>9}"
            f" {_span(b.released_at, b.first_handout_at):>9}"
            f" {_span(b.first_handout_at, b.last_terminal_report_at):>13}"
            f" {_span(b.last_terminal_report_at, b.settled_at):>9}"
            f" {_span(b.settled_at, b.next_release_at):>14}"
            f" {_span(b.released_at, end):>7}"
            f" {_seconds(b.median_job_seconds):>8} {_seconds(b.slowest_job_seconds):>8}"
            f" {_span(b.released_at, b.last_handout_at):>13}"
            f" {_span(b.released_at, b.last_job_started_at):>11}"
        )
    return "\n".join(lines)
