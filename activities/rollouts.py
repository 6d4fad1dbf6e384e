"""Activities of RolloutWorkflow: snapshot and read targets, write the read model. Idempotent by
design: a rollout's targets are snapshotted once, job rows only move forward and the rollout row
carries a revision that gates its audit entries, so a retried or repeated call changes nothing
twice."""

from collections.abc import Sequence
from typing import Any, Protocol

import asyncpg
from temporalio import activity
from temporalio.common import MetricCounter

from activities.heartbeat import heartbeating
from contract.text import storable, storable_or_none
from contract.wire import FINISHED_ROLLOUT_STATUSES
from store import audit, instances, jobs, polls, rollout_targets, rollouts
from store.statuses import WITHHOLDING_ROLLOUT_STATUSES
from workflows.rollout_models import (
    AuditEvent,
    BatchTargetsInput,
    BatchTargetsResult,
    LateTargetsInput,
    RecordProgressInput,
    RecordProgressResult,
    ReportedStepsInput,
    ReportedStepsResult,
    SnapshotTargetsInput,
    SnapshotTargetsResult,
)


class TakeTargets(Protocol):
    async def __call__(
        self,
        conn: asyncpg.Connection,
        rollout_id: str,
        *,
        channel: str,
        versions: Sequence[str],
        stale_after_seconds: int,
    ) -> int: ...


STORABLE_NOTE = "unstorable characters in text were replaced with U+FFFD"
# The SDK's adapter adds the activity and its workflow (rollout-<id>) to every line; each line
# also passes `rollout_id` as extra, a field of its own in JSON logs (runtime.logs).
log = activity.logger


def _unstorable_text_writes() -> MetricCounter:
    """Counted through the SDK's runtime: served with its own metrics (WORKER_METRICS_ADDRESS)."""
    return activity.metric_meter().create_counter(
        "rollout_unstorable_text_writes",
        "Read-model writes PostgreSQL refused for their text, written again made storable",
    )


class RolloutActivities:
    """Holds the worker's pool; its methods are registered as activities. `stale_after_seconds`:
    hosts not seen for longer are left out of new rollouts' targets (0: none is)."""

    def __init__(self, pool: asyncpg.Pool, *, stale_after_seconds: int = 0) -> None:
        self.pool = pool
        self.stale_after_seconds = stale_after_seconds

    @activity.defn(name="snapshot_targets")
    async def snapshot_targets(self, input: SnapshotTargetsInput) -> SnapshotTargetsResult:
        """Stores the rollout's targets (once: a retry answers from the stored snapshot) and
        returns only their number, so no payload grows with the fleet."""
        return await self._targets(rollout_targets.snapshot, input)

    @activity.defn(name="late_targets")
    async def late_targets(self, input: LateTargetsInput) -> SnapshotTargetsResult:
        """Adds the hosts that became targets since the start (includeLateJoiners); the count."""
        return await self._targets(rollout_targets.append_late, input)

    async def _targets(
        self, take: TakeTargets, input: SnapshotTargetsInput | LateTargetsInput
    ) -> SnapshotTargetsResult:
        """`take` stores targets of the rollout among the channel's hosts below its version,
        heartbeating while it runs (it grows with the fleet)."""
        async with heartbeating(), self.pool.acquire() as conn:
            versions = await instances.versions_below(
                conn, channel=input.channel, version=input.version
            )
            count = await take(
                conn,
                input.rollout_id,
                channel=input.channel,
                versions=versions,
                stale_after_seconds=self.stale_after_seconds,
            )
        return SnapshotTargetsResult(target_count=count)

    @activity.defn(name="batch_targets")
    async def batch_targets(self, input: BatchTargetsInput) -> BatchTargetsResult:
        """One batch's instance ids, read from the snapshot when the batch starts."""
        ids = await rollout_targets.slice_of(
            self.pool, input.rollout_id, start=input.start, limit=input.limit
        )
        return BatchTargetsResult(instance_ids=ids)

    @activity.defn(name="reported_steps")
    async def reported_steps(self, input: ReportedStepsInput) -> ReportedStepsResult:
        async with heartbeating():
            steps = await jobs.reported_steps(self.pool, input.job_ids)
        return ReportedStepsResult.model_validate({"steps": steps})

    @activity.defn(name="record_progress")
    async def record_progress(self, input: RecordProgressInput) -> RecordProgressResult:
        """A write PostgreSQL refuses for its data (SQLSTATE class 22, e.g. a NUL character)
        is made again with all free text made storable: retrying the same data would fail for
        ever and wedge the rollout."""
        async with heartbeating():
            return await self._record_storable(input)

    async def _record_storable(self, input: RecordProgressInput) -> RecordProgressResult:
        try:
            return await self._record(input, None)
        except asyncpg.DataError as exc:
            repaired = _storable_input(input)
            if repaired == input:
                raise  # not a text problem: retrying (and alerting) is all that can be done
            rollout_id = _rollout_id(input)
            log.error(
                "rollout %s: PostgreSQL refused the read-model write (%s, SQLSTATE %s);"
                " writing it with unstorable characters replaced",
                rollout_id,
                type(exc).__name__,
                exc.sqlstate,
                extra={"rollout_id": rollout_id},
            )
            _unstorable_text_writes().add(1)
            note = AuditEvent(
                actor="worker",
                action="rollout.text_made_storable",
                detail={"error": type(exc).__name__, "sqlstate": exc.sqlstate},
            )
            return await self._record(_noted(repaired), note)

    async def _record(
        self, input: RecordProgressInput, note: AuditEvent | None
    ) -> RecordProgressResult:
        async with self.pool.acquire() as conn, conn.transaction():
            await jobs.upsert_many(conn, input.jobs)
            replaced = None
            if input.progress is not None:
                replaced = await rollouts.record_progress(conn, input.progress)
            applied = input.progress is None or replaced is not None
            if applied:
                events = input.events + ([note] if note else [])
                await audit.record_many(
                    conn, f"rollout:{_rollout_id(input)}", [e.model_dump() for e in events]
                )
            if applied and input.progress and input.progress.status in FINISHED_ROLLOUT_STATUSES:
                await rollout_targets.drop(conn, input.progress.id)
            # Only a write with pending jobs (a batch or a retry handed out), or one that moves
            # the rollout off a status that withholds them (a resume, a retry's pause lifted
            # in a later write than its job's), can give a held poll a job: held polls of every
            # API process look again once it commits. Progress from reports wakes none of them.
            hands_out_again = (
                input.progress is not None
                and replaced in WITHHOLDING_ROLLOUT_STATUSES
                and input.progress.status not in WITHHOLDING_ROLLOUT_STATUSES
            )
            if hands_out_again or any(job.status == "pending" for job in input.jobs):
                await polls.announce(conn, _rollout_id(input))
            return RecordProgressResult(applied=applied)


def _rollout_id(input: RecordProgressInput) -> str:
    if input.progress is not None:
        return input.progress.id
    return input.jobs[0].rollout_id if input.jobs else "?"


def _storable_input(input: RecordProgressInput) -> RecordProgressInput:
    """`input` with every free-text field storable."""
    progress = input.progress
    if progress is not None:
        progress = progress.model_copy(
            update={
                "paused_reason": storable_or_none(progress.paused_reason),
                "details": storable(progress.details),
            }
        )
    return input.model_copy(
        update={
            "progress": progress,
            "jobs": [
                job.model_copy(update={"message": storable_or_none(job.message)})
                for job in input.jobs
            ],
            "events": [
                event.model_copy(update={"detail": _storable_json(event.detail)})
                for event in input.events
            ],
        }
    )


def _noted(input: RecordProgressInput) -> RecordProgressInput:
    """The rollout's details say that its text was changed to be stored."""
    if input.progress is None:
        return input
    details = f"{input.progress.details} · {STORABLE_NOTE}"
    return input.model_copy(
        update={"progress": input.progress.model_copy(update={"details": details})}
    )


def _storable_json(value: Any) -> Any:
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        return {storable(str(k)): _storable_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable_json(v) for v in value]
    return value
