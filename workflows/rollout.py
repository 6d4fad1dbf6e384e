"""RolloutWorkflow: one per rollout (id `rollout-<id>`), the source of truth of its progress.

It cuts the targets into batches, releases them, settles jobs from agent reports (signals),
times them out with durable timers, and answers admin actions as Updates whose validators refuse
what does not apply now. Every change is written to the read model through an activity; a job is
handed out only after its row is written. Fleet-sized rollouts continue-as-new before Temporal's
per-run signal and history limits, carrying their state.
"""

import asyncio
import contextlib
from collections import Counter
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities.rollouts import TARGETS_TOO_LARGE, RolloutActivities
    from contract.wire import OPEN_JOB_STATUSES, TERMINAL_JOB_STATUSES
    from store.jobs import JobWrite
    from store.rollouts import FINISHED_STATUSES, RolloutProgress
    from workflows.rollout_models import (
        FAILED_JOB_STATUSES,
        RETRYABLE_JOB_STATUSES,
        AbortInput,
        ActionResult,
        AdvanceInput,
        AuditEvent,
        BatchTargetsInput,
        HandedOutJob,
        Handouts,
        HandoutsQuery,
        JobForInstanceQuery,
        JobForInstanceResult,
        JobReportSignal,
        JobState,
        LoadTargetsInput,
        PauseInput,
        RecordProgressInput,
        ReportedStepsInput,
        ResumeInput,
        RetryInput,
        RolloutInput,
        RolloutResult,
        RolloutState,
        RolloutStatus,
        RolloutView,
        SnapshotTargetsInput,
        WaitStartedInput,
    )
    from workflows.search_attributes import RELEASE_VERSION, ROLLOUT_CHANNEL, ROLLOUT_STATUS

# Temporal refuses the 10,001st signal of a run; leave room for signals racing continue-as-new.
SIGNAL_BUDGET = 8_000
# At a batch boundary nothing is in flight, so continue-as-new earlier there.
BOUNDARY_SIGNAL_BUDGET = 4_000
# Job rows per activity call: keeps every payload far below Temporal's 2 MiB limit.
JOBS_PER_WRITE = 500
# The workflow keeps only the head of a report's message; the full text is in job_reports.
MESSAGE_LIMIT = 1024
# Names (and a count) in a pause reason; the rest are in the jobs listing.
REASON_NAMES = 10
WORKFLOW_ACTOR = "workflow"
# Who ends a rollout whose run was asked to cancel (Web UI "Request Cancellation", CLI cancel).
TEMPORAL_ACTOR = "temporal"
CANCEL_REASON = "cancellation requested in Temporal"
# Behaviour changes since the first recorded histories: old runs replay without them.
PATCH_ABORT_BEFORE_BATCH_1 = "abort-before-batch-1"
PATCH_TARGETS_TOO_LARGE = "targets-too-large-ends-rollout"
PATCH_CANCEL_IS_ABORT = "cancel-is-abort"
PATCH_TIMED_OUT_AT_REPORTED_STEP = "timed-out-at-reported-step"
# Targets snapshotted in PostgreSQL, read a batch at a time: nothing carried grows with the fleet.
PATCH_TARGETS_IN_POSTGRES = "targets-in-postgres"
STATUS_WORDS = (
    ("succeeded", "succeeded"),
    ("in_progress", "in progress"),
    ("pending", "pending"),
    ("failed", "failed"),
    ("rolled_back", "rolled back"),
    ("rollback_failed", "rollback failed"),
    ("timed_out", "timed out"),
    ("cancelled", "cancelled"),
)

ACTIVITY_TIMEOUT = timedelta(seconds=60)
# The read model must eventually be written: retry without limit, backing off to 30 s.
ACTIVITY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=0,
)


# A look-up that only improves a message must not hold the rollout up for long.
LOOKUP_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3)


# What a cancel request raises where the run awaits (checked with is_cancelled_exception).
CANCELLATION = (asyncio.CancelledError, ActivityError)


def _refused(reason: str) -> ApplicationError:
    return ApplicationError(reason, type="RolloutActionRefused", non_retryable=True)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@workflow.defn(name="RolloutWorkflow")
class RolloutWorkflow:
    @workflow.init
    def __init__(self, input: RolloutInput) -> None:
        # State lives here, not in run(): signals delivered with the first task need it.
        self._spec = input.spec
        self._state = input.state or RolloutState()
        self._jobs: dict[str, JobState] = {job.id: job for job in self._state.jobs}
        self._open_by_instance = {
            job.instance_id: job.id
            for job in self._jobs.values()
            if job.status in OPEN_JOB_STATUSES
        }
        self._dirty: set[str] = set(self._state.unwritten_jobs)
        self._messages: dict[str, str] = dict(self._state.unwritten_messages)
        self._events: list[AuditEvent] = list(self._state.unwritten_events)
        self._row_dirty = True
        self._changed = False
        self._releasing = False
        self._closing = False
        self._signals = 0
        self._write_lock = asyncio.Lock()
        self._published: tuple[str, str] | None = None

    # --- run ----------------------------------------------------------------------------------

    @workflow.run
    async def run(self, input: RolloutInput) -> RolloutResult:
        try:
            return await self._run()
        except CANCELLATION as err:
            # A cancel request reaches the run as asyncio's CancelledError, or as the
            # ActivityError of the activity it was awaiting.
            if is_cancelled_exception(err) and workflow.patched(PATCH_CANCEL_IS_ABORT):
                await self._end_cancelled()
            raise

    async def _run(self) -> RolloutResult:
        if self._state.targets is None and self._state.target_count is None:
            await self._start()
        while True:
            self._changed = False
            await self._expire_overdue_jobs()
            self._settle()
            if self._should_continue_as_new():
                await self._let_handlers_finish()
                workflow.continue_as_new(RolloutInput(spec=self._spec, state=self._snapshot()))
            if self._bake_over():
                await self._release_batch(self._state.current_batch + 1, WORKFLOW_ACTOR)
                continue
            self._publish()
            await self._write()
            if self._is_done():
                break
            await self._sleep_until_change()
        self._closing = True
        self._row_dirty = True
        self._publish()
        await self._drain()
        return RolloutResult(status=self._state.status, counts=self._counts())

    async def _start(self) -> None:
        if workflow.patched(PATCH_TARGETS_IN_POSTGRES):
            snapshot = await workflow.execute_activity_method(
                RolloutActivities.snapshot_targets,
                SnapshotTargetsInput(
                    rollout_id=self._spec.id, channel=self._spec.channel, version=self._spec.version
                ),
                start_to_close_timeout=ACTIVITY_TIMEOUT,
                retry_policy=ACTIVITY_RETRY,
            )
            self._state.target_count = snapshot.target_count
        elif not await self._load_targets():
            return
        if self._state.status == "aborted" and workflow.patched(PATCH_ABORT_BEFORE_BATCH_1):
            self._state.note = "aborted before batch 1 was released"
            return
        self._event(
            WORKFLOW_ACTOR,
            "rollout.started",
            {"targets": self._target_count(), "batches": self._total_batches()},
        )
        if self._target_count():
            await self._release_batch(1, WORKFLOW_ACTOR)
            return
        self._state.note = (
            f"no instance on channel {self._spec.channel} is below {self._spec.version}:"
            " nothing to update"
        )
        self._finish("completed")

    async def _load_targets(self) -> bool:
        """Runs started before targets-in-postgres: the whole list in state. False when the
        rollout ended because the list is too large to carry."""
        try:
            result = await workflow.execute_activity_method(
                RolloutActivities.load_targets,
                LoadTargetsInput(channel=self._spec.channel, version=self._spec.version),
                start_to_close_timeout=ACTIVITY_TIMEOUT,
                retry_policy=ACTIVITY_RETRY,
            )
        except ActivityError as err:
            cause = err.cause
            if not (
                isinstance(cause, ApplicationError)
                and cause.type == TARGETS_TOO_LARGE
                and workflow.patched(PATCH_TARGETS_TOO_LARGE)
            ):
                raise
            self._cannot_start(f"could not start: {cause.message}")
            return False
        self._state.targets = result.instance_ids
        return True

    def _cannot_start(self, reason: str) -> None:
        """The rollout ends, saying why, instead of retrying what cannot succeed."""
        self._state.targets = []
        self._state.note = reason
        if self._state.status not in FINISHED_STATUSES:
            self._abort(WORKFLOW_ACTOR, reason)

    async def _end_cancelled(self) -> None:
        """A cancel request (Web UI, `temporal workflow cancel`) is an abort: open jobs are
        cancelled (no report can reach a closed run) and the read model says so before the run
        closes as cancelled."""
        if self._state.status not in FINISHED_STATUSES:
            self._event(TEMPORAL_ACTOR, "rollout.abort", {"reason": CANCEL_REASON})
            self._abort(TEMPORAL_ACTOR, CANCEL_REASON)
            self._state.note = CANCEL_REASON
        for job in self._latest_jobs():
            if job.status in OPEN_JOB_STATUSES:
                self._settle_job(job, "cancelled", job.step)
        self._closing = True
        self._row_dirty = True
        self._publish()
        await self._drain()

    def _is_done(self) -> bool:
        if self._state.status == "completed":
            return True
        return self._state.status == "aborted" and not self._open_by_instance

    async def _sleep_until_change(self) -> None:
        if self._unwritten():
            return
        wake = self._next_wake()
        timeout = None if wake is None else (wake - workflow.now()).total_seconds()
        if timeout is not None and timeout <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(lambda: self._changed, timeout=timeout)

    def _next_wake(self) -> datetime | None:
        times = [job.deadline for job in self._timed_jobs()]
        if self._auto_advance_due_at() is not None:
            times.append(self._auto_advance_due_at())  # type: ignore[arg-type]
        return min(times, default=None)

    def _should_continue_as_new(self) -> bool:
        if self._releasing or self._is_done():
            return False
        if self._signals >= SIGNAL_BUDGET or workflow.info().is_continue_as_new_suggested():
            return True
        at_boundary = self._state.status == "awaiting_advance"
        return at_boundary and self._signals >= BOUNDARY_SIGNAL_BUDGET

    async def _let_handlers_finish(self) -> None:
        """Before continue-as-new: no update may be cut off; reports keep arriving meanwhile,
        so what they changed after the last write is carried, not waited for."""
        while True:
            await workflow.wait_condition(
                lambda: workflow.all_handlers_finished() and not self._releasing
            )
            await self._write()
            if workflow.all_handlers_finished() and not self._releasing:
                return

    async def _drain(self) -> None:
        """Before the run returns: every handler finished and everything written."""
        while True:
            await self._let_handlers_finish()
            if not self._unwritten():
                return

    def _snapshot(self) -> RolloutState:
        self._state.jobs = list(self._jobs.values())
        self._state.unwritten_jobs = sorted(self._dirty)
        self._state.unwritten_messages = dict(self._messages)
        self._state.unwritten_events = list(self._events)
        return self._state

    # --- batches ------------------------------------------------------------------------------

    def _target_count(self) -> int:
        if self._state.targets is not None:  # a run started before targets-in-postgres
            return len(self._state.targets)
        return self._state.target_count or 0

    def _total_batches(self) -> int:
        return -(-self._target_count() // self._spec.batch_size)

    async def _batch_targets(self, number: int) -> list[str]:
        """Batch `number`'s instance ids: read from the snapshot, or sliced from the carried list
        of a run started before targets-in-postgres (no activity, as those histories have none)."""
        start = (number - 1) * self._spec.batch_size
        if self._state.targets is not None:
            return self._state.targets[start : start + self._spec.batch_size]
        result = await workflow.execute_activity_method(
            RolloutActivities.batch_targets,
            BatchTargetsInput(rollout_id=self._spec.id, start=start, limit=self._spec.batch_size),
            start_to_close_timeout=ACTIVITY_TIMEOUT,
            retry_policy=ACTIVITY_RETRY,
        )
        return result.instance_ids

    async def _release_batch(self, number: int, actor: str) -> None:
        # Releasing (and running) before the targets are read: no second advance starts
        # meanwhile, and a pause or abort taken in while they load stands.
        self._releasing = True
        self._set_status("running", actor)
        try:
            instance_ids = await self._batch_targets(number)
        except BaseException:
            self._releasing = False
            raise
        new_jobs = [self._new_job(instance_id, number, 1) for instance_id in instance_ids]
        cancelled: BaseException | None = None
        try:
            await self._write(new_jobs)
        except CANCELLATION as err:
            if not is_cancelled_exception(err):
                raise
            # The rows may be written already: the jobs must be known, to be cancelled too.
            cancelled = err
        finally:
            self._releasing = False
        self._archive_current_batch()
        self._state.current_batch = number
        self._add_jobs(new_jobs)
        self._event(actor, "rollout.batch_released", {"batch": number, "jobs": len(new_jobs)})
        if self._state.status == "aborted":  # aborted while the rows were being written
            self._cancel_pending()
        if cancelled is not None:
            raise cancelled

    def _new_job(self, instance_id: str, batch: int, attempt: int) -> JobState:
        deadline = workflow.now() + timedelta(seconds=self._spec.job_timeout_seconds)
        return JobState(
            id=workflow.uuid4().hex,
            instance_id=instance_id,
            batch=batch,
            attempt=attempt,
            deadline=deadline,
        )

    def _add_jobs(self, new_jobs: list[JobState]) -> None:
        for job in new_jobs:
            self._jobs[job.id] = job
            self._open_by_instance[job.instance_id] = job.id
        self._changed = True

    def _archive_current_batch(self) -> None:
        """Fold the settled batch into counts: the carried state stays one batch big."""
        for job in self._latest_jobs():
            self._state.past_counts[job.status] = self._state.past_counts.get(job.status, 0) + 1
            if job.status in FAILED_JOB_STATUSES:
                self._state.past_failures += 1
                if len(self._state.past_failure_notes) < REASON_NAMES:
                    self._state.past_failure_notes.append(self._failure_note(job))
        self._jobs = {}
        self._open_by_instance = {}

    def _latest_jobs(self) -> list[JobState]:
        return [job for job in self._jobs.values() if not job.superseded]

    def _settle(self) -> None:
        """Derive the rollout status from its jobs: failures pause, a settled batch waits."""
        state = self._state
        if self._releasing or state.status in FINISHED_STATUSES or state.current_batch == 0:
            return
        failures = self._failure_count()
        if failures > self._tolerated_failures() and state.status != "paused":
            self._pause(WORKFLOW_ACTOR, self._failure_reason(failures), for_failures=True)
            return
        if state.status != "running" or self._open_by_instance:
            return
        if state.current_batch >= self._total_batches():
            self._finish("completed")
        else:
            state.settled_at = workflow.now()
            self._set_status("awaiting_advance", WORKFLOW_ACTOR)

    def _auto_advance_due_at(self) -> datetime | None:
        state = self._state
        if not self._spec.auto_advance or state.status != "awaiting_advance":
            return None
        if state.settled_at is None or state.current_batch >= self._total_batches():
            return None
        return state.settled_at + timedelta(seconds=self._spec.bake_seconds)

    def _bake_over(self) -> bool:
        due = self._auto_advance_due_at()
        return due is not None and workflow.now() >= due and not self._releasing

    def _timed_jobs(self) -> list[JobState]:
        """Open jobs whose deadline runs: pending ones only while they are handed out."""
        withheld = self._state.status == "paused"
        return [
            self._jobs[job_id]
            for job_id in self._open_by_instance.values()
            if self._jobs[job_id].status == "in_progress" or not withheld
        ]

    async def _expire_overdue_jobs(self) -> None:
        now = workflow.now()
        overdue = [job for job in self._timed_jobs() if job.deadline <= now]
        if overdue and workflow.patched(PATCH_TIMED_OUT_AT_REPORTED_STEP):
            steps = await self._reported_steps(overdue)
            # Looked up before they are settled, so no query sees a job timed out in a rollout
            # not yet paused for it; a report may have settled one meanwhile.
            still_timed = {job.id for job in self._timed_jobs()}
            overdue = [job for job in overdue if job.id in still_timed]
            for job in overdue:
                job.step = steps.get(job.id, job.step)  # type: ignore[assignment]
        for job in overdue:
            self._settle_job(job, "timed_out", job.step)
        if overdue:
            names = [job.instance_id for job in overdue[:REASON_NAMES]]
            detail = {"count": len(overdue), "instances": names}
            self._event(WORKFLOW_ACTOR, "rollout.jobs_timed_out", detail)

    async def _reported_steps(self, jobs: list[JobState]) -> dict[str, str]:
        """Where each job's agent last said it was: only the acknowledged reports know, as the
        workflow hears of a job starting and ending, not of each step. Should the read model
        not answer, the workflow's own step stands."""
        steps: dict[str, str] = {}
        for start in range(0, len(jobs), JOBS_PER_WRITE):
            chunk = jobs[start : start + JOBS_PER_WRITE]
            try:
                result = await workflow.execute_activity_method(
                    RolloutActivities.reported_steps,
                    ReportedStepsInput(job_ids=[job.id for job in chunk]),
                    start_to_close_timeout=ACTIVITY_TIMEOUT,
                    retry_policy=LOOKUP_RETRY,
                )
            except ActivityError as err:
                if is_cancelled_exception(err):
                    raise
                break
            steps.update(result.steps)
        return steps

    def _settle_job(self, job: JobState, status: str, step: str | None) -> None:
        job.status = status  # type: ignore[assignment]
        job.step = step  # type: ignore[assignment]
        if self._open_by_instance.get(job.instance_id) == job.id:
            del self._open_by_instance[job.instance_id]
        self._dirty.add(job.id)
        self._changed = True

    def _cancel_pending(self) -> None:
        for job in list(self._latest_jobs()):
            if job.status == "pending":
                self._settle_job(job, "cancelled", None)

    # --- failures -----------------------------------------------------------------------------

    def _current_failures(self) -> list[JobState]:
        return [job for job in self._latest_jobs() if job.status in FAILED_JOB_STATUSES]

    def _failure_count(self) -> int:
        return self._state.past_failures + len(self._current_failures())

    def _tolerated_failures(self) -> int:
        return max(self._spec.max_failures, self._state.accepted_failures)

    @staticmethod
    def _failure_note(job: JobState) -> str:
        return f"{job.instance_id} {job.status}" + (f" at {job.step}" if job.step else "")

    def _failure_reason(self, failures: int) -> str:
        notes = [self._failure_note(job) for job in self._current_failures()]
        notes = (notes + self._state.past_failure_notes)[:REASON_NAMES]
        if failures > len(notes):
            notes.append(f"and {failures - len(notes)} more")
        limit = f"max {self._spec.max_failures}"
        if self._state.accepted_failures > self._spec.max_failures:
            limit += f", {self._state.accepted_failures} accepted"
        noun = "job" if failures == 1 else "jobs"
        return f"{failures} {noun} failed ({limit}): " + "; ".join(notes)

    # --- status and actions -------------------------------------------------------------------

    def _set_status(self, status: RolloutStatus, actor: str, reason: str | None = None) -> None:
        previous = self._state.status
        if previous == status:
            return
        self._state.status = status
        detail = {"from": previous, "to": status} | ({"reason": reason} if reason else {})
        self._event(actor, "rollout.status_changed", detail)

    def _finish(self, status: RolloutStatus) -> None:
        self._state.finished_at = workflow.now()
        self._state.paused_reason = None
        self._state.paused_for_failures = False
        self._set_status(status, WORKFLOW_ACTOR)

    def _pause(self, actor: str, reason: str | None, *, for_failures: bool = False) -> None:
        self._state.paused_reason = reason or f"paused by {actor}"
        self._state.paused_for_failures = for_failures
        self._set_status("paused", actor, self._state.paused_reason)
        self._changed = True

    def _resume(self, actor: str) -> None:
        if self._state.paused_for_failures:
            self._state.accepted_failures = self._failure_count()
        self._state.paused_reason = None
        self._state.paused_for_failures = False
        # Pending jobs were withheld: their time starts again now.
        for job in self._latest_jobs():
            if job.status == "pending":
                job.deadline = workflow.now() + timedelta(seconds=self._spec.job_timeout_seconds)
                self._dirty.add(job.id)
        self._set_status("running", actor)
        self._changed = True

    def _abort(self, actor: str, reason: str | None) -> None:
        self._cancel_pending()
        self._state.paused_reason = None
        self._state.paused_for_failures = False
        self._state.finished_at = workflow.now()
        self._set_status("aborted", actor, reason)
        self._changed = True

    async def _retry(self, actor: str) -> list[str]:
        failed = [job for job in self._latest_jobs() if job.status in RETRYABLE_JOB_STATUSES]
        new_jobs = [self._new_job(j.instance_id, j.batch, j.attempt + 1) for j in failed]
        self._releasing = True
        if self._state.status != "paused":
            self._set_status("running", actor)
        try:
            await self._write(new_jobs)
        finally:
            self._releasing = False
        for job in failed:
            job.superseded = True
        self._add_jobs(new_jobs)
        if self._state.status == "aborted":
            self._cancel_pending()
        elif self._state.paused_for_failures and (
            self._failure_count() <= self._tolerated_failures()
        ):
            self._state.paused_reason = None
            self._state.paused_for_failures = False
            self._set_status("running", actor)
        return [job.instance_id for job in failed]

    def _refusal(self, action: str) -> str | None:
        """Why `action` does not apply now, or None: shared by validators and handlers."""
        state = self._state
        if state.status in FINISHED_STATUSES:
            return f"rollout is {state.status}; {action} does not apply to a finished rollout"
        # Abort applies at any point: before batch 1 and while a batch is being released.
        if (state.current_batch == 0 and action != "abort") or (
            self._releasing and action in ("advance", "retry")
        ):
            return "a batch is being released; try again in a moment"
        if action == "advance":
            if state.status == "paused":
                return f"rollout is paused ({state.paused_reason}); resume it first"
            if state.status != "awaiting_advance":
                unsettled = len(self._open_by_instance)
                return (
                    f"batch {state.current_batch}/{self._total_batches()} is still running"
                    f" ({unsettled} jobs not settled)"
                )
        if action == "pause" and state.status == "paused":
            return f"rollout is already paused ({state.paused_reason})"
        if action == "resume" and state.status != "paused":
            return f"rollout is not paused (it is {state.status})"
        if action == "retry" and not any(
            job.status in RETRYABLE_JOB_STATUSES for job in self._latest_jobs()
        ):
            return (
                f"batch {state.current_batch} has no failed, rolled-back or timed-out job to retry"
            )
        return None

    def _ensure_allowed(self, action: str) -> None:
        reason = self._refusal(action)
        if reason is not None:
            raise _refused(reason)

    def _action_result(self, message: str) -> ActionResult:
        return ActionResult(
            status=self._state.status, current_batch=self._state.current_batch, message=message
        )

    # --- updates: admin actions, refused at once by their validators -------------------------

    @workflow.update(name="advance")
    async def advance(self, input: AdvanceInput) -> ActionResult:
        self._ensure_allowed("advance")
        self._event(input.actor, "rollout.advance")
        await self._release_batch(self._state.current_batch + 1, input.actor)
        total = self._total_batches()
        return self._action_result(f"released batch {self._state.current_batch}/{total}")

    @advance.validator
    def _validate_advance(self, input: AdvanceInput) -> None:
        self._ensure_allowed("advance")

    @workflow.update(name="pause")
    def pause(self, input: PauseInput) -> ActionResult:
        self._ensure_allowed("pause")
        self._event(input.actor, "rollout.pause", {"reason": input.reason})
        self._pause(input.actor, input.reason)
        return self._action_result(f"paused: {self._state.paused_reason}")

    @pause.validator
    def _validate_pause(self, input: PauseInput) -> None:
        self._ensure_allowed("pause")

    @workflow.update(name="resume")
    def resume(self, input: ResumeInput) -> ActionResult:
        self._ensure_allowed("resume")
        self._event(input.actor, "rollout.resume")
        self._resume(input.actor)
        return self._action_result("resumed")

    @resume.validator
    def _validate_resume(self, input: ResumeInput) -> None:
        self._ensure_allowed("resume")

    @workflow.update(name="retry")
    async def retry(self, input: RetryInput) -> ActionResult:
        self._ensure_allowed("retry")
        instances = await self._retry(input.actor)
        self._event(input.actor, "rollout.retry", {"instances": instances[:REASON_NAMES]})
        return self._action_result(f"released {len(instances)} jobs again")

    @retry.validator
    def _validate_retry(self, input: RetryInput) -> None:
        self._ensure_allowed("retry")

    @workflow.update(name="abort")
    def abort(self, input: AbortInput) -> ActionResult:
        self._ensure_allowed("abort")
        self._event(input.actor, "rollout.abort", {"reason": input.reason})
        self._abort(input.actor, input.reason)
        return self._action_result("aborted")

    @abort.validator
    def _validate_abort(self, input: AbortInput) -> None:
        self._ensure_allowed("abort")

    @workflow.update(name="wait_started")
    async def wait_started(self, input: WaitStartedInput) -> ActionResult:
        """Answers once batch 1 is handed out (or the rollout finished): for update-with-start."""
        await workflow.wait_condition(
            lambda: (
                (self._state.current_batch > 0 and not self._releasing)
                or self._state.status in FINISHED_STATUSES
            )
        )
        return self._action_result(self._state.note or "batch 1 released")

    # --- signals: agent reports, and pause/resume for operators in the Temporal CLI ----------

    @workflow.signal(name="job_report")
    def job_report(self, report: JobReportSignal) -> None:
        """Idempotent: unknown job, another instance's job or a settled job change nothing."""
        self._signals += 1
        job = self._jobs.get(report.job_id)
        if job is None or job.instance_id != report.instance_id:
            return
        if job.status in TERMINAL_JOB_STATUSES:
            return
        if report.status == "in_progress":
            if job.status == "in_progress" and (report.step is None or report.step == job.step):
                return
            job.status = "in_progress"
            job.step = report.step or job.step
            self._dirty.add(job.id)
            self._changed = True
        else:
            self._settle_job(job, report.status, report.step)
        if report.message:
            self._messages[job.id] = report.message[:MESSAGE_LIMIT]

    @workflow.signal(name="pause")
    def pause_signal(self, input: PauseInput | None = None) -> None:
        self._signals += 1
        input = input or PauseInput()
        if self._refusal("pause") is None:
            self._event(input.actor, "rollout.pause", {"reason": input.reason, "via": "signal"})
            self._pause(input.actor, input.reason)

    @workflow.signal(name="resume")
    def resume_signal(self, input: ResumeInput | None = None) -> None:
        self._signals += 1
        input = input or ResumeInput()
        if self._refusal("resume") is None:
            self._event(input.actor, "rollout.resume", {"via": "signal"})
            self._resume(input.actor)

    # --- queries ------------------------------------------------------------------------------

    @workflow.query(name="view")
    def view(self) -> RolloutView:
        return RolloutView(
            status=self._state.status,
            paused_reason=self._state.paused_reason,
            current_batch=self._state.current_batch,
            total_batches=self._total_batches(),
            target_count=self._target_count(),
            details=self._details(),
            note=self._state.note,
            jobs=list(self._jobs.values()),
            finished_at=self._state.finished_at,
        )

    @workflow.query(name="job_for_instance")
    def job_for_instance(self, query: JobForInstanceQuery) -> JobForInstanceResult:
        """The job an agent may run now (PROTOCOL §5): none while paused or finished."""
        return JobForInstanceResult(job=self._handed_out().get(query.instance_id))

    @workflow.query(name="handouts")
    def handouts(self, query: HandoutsQuery) -> Handouts:
        return Handouts(jobs=self._handed_out())

    def _handed_out(self) -> dict[str, HandedOutJob]:
        if self._state.status == "paused" or self._state.status in FINISHED_STATUSES:
            return {}
        return {
            instance_id: HandedOutJob(
                id=job_id,
                rollout_id=self._spec.id,
                release_id=self._spec.manifest_id,
                deadline=_iso(self._jobs[job_id].deadline),
            )
            for instance_id, job_id in self._open_by_instance.items()
        }

    # --- the read model, the Web UI -----------------------------------------------------------

    def _event(self, actor: str, action: str, detail: dict | None = None) -> None:
        self._events.append(AuditEvent(actor=actor, action=action, detail=detail or {}))
        self._row_dirty = True

    def _unwritten(self) -> bool:
        return bool(self._dirty or self._events or self._row_dirty)

    def _job_write(self, job: JobState) -> JobWrite:
        return JobWrite(
            id=job.id,
            rollout_id=self._spec.id,
            instance_id=job.instance_id,
            batch=job.batch,
            attempt=job.attempt,
            status=job.status,
            step=job.step,
            message=self._messages.pop(job.id, None),
            deadline=job.deadline,
        )

    async def _write(self, new_jobs: list[JobState] | None = None) -> None:
        """Write what changed to PostgreSQL, one writer at a time.

        A release (`new_jobs`) writes every change, as the batch it closes is folded away
        after. Otherwise at most JOBS_PER_WRITE changed jobs per call: the run loop gets back
        quickly to its continue-as-new check while reports pour in; the rest follows next turn.
        """
        async with self._write_lock:
            if not self._unwritten() and not new_jobs:
                return
            batch = sorted(self._dirty)
            if new_jobs is None:
                batch = batch[:JOBS_PER_WRITE]
            self._dirty.difference_update(batch)
            dirty = [self._jobs[job_id] for job_id in batch if job_id in self._jobs]
            writes = [self._job_write(job) for job in dirty + (new_jobs or [])]
            events, self._events = self._events, []
            self._row_dirty = False
            self._state.revision += 1
            progress = self._progress()
            chunks = [writes[i : i + JOBS_PER_WRITE] for i in range(0, len(writes), JOBS_PER_WRITE)]
            chunks = chunks or [[]]
            try:
                for index, chunk in enumerate(chunks):
                    last = index == len(chunks) - 1
                    await workflow.execute_activity_method(
                        RolloutActivities.record_progress,
                        RecordProgressInput(
                            progress=progress if last else None,
                            jobs=chunk,
                            events=events if last else [],
                        ),
                        start_to_close_timeout=ACTIVITY_TIMEOUT,
                        retry_policy=ACTIVITY_RETRY,
                    )
            except CANCELLATION as err:
                if not is_cancelled_exception(err):
                    raise
                # The run was asked to cancel mid-write: what this write carried is written
                # again by the final write (job rows and the revision gate make that safe).
                self._dirty.update(batch)
                self._events = events + self._events
                self._row_dirty = True
                raise

    def _progress(self) -> RolloutProgress:
        return RolloutProgress(
            id=self._spec.id,
            revision=self._state.revision,
            status=self._state.status,
            paused_reason=self._state.paused_reason,
            current_batch=self._state.current_batch,
            total_batches=self._total_batches(),
            target_count=self._target_count(),
            details=self._details(),
            finished_at=self._state.finished_at,
            workflow_closed=self._closing,
        )

    def _counts(self) -> dict[str, int]:
        counts = Counter(self._state.past_counts)
        counts.update(job.status for job in self._latest_jobs())
        return dict(counts)

    def _details(self) -> str:
        """One line for people: 'batch 3/10 · 4 succeeded · 1 in progress · paused: ...'."""
        state = self._state
        counts = self._counts()
        parts = [f"batch {state.current_batch}/{self._total_batches()}"]
        parts += [f"{counts[key]} {word}" for key, word in STATUS_WORDS if counts.get(key)]
        if state.status == "paused":
            parts.append(f"paused: {state.paused_reason}")
        else:
            parts.append(state.status.replace("_", " "))
        if state.note:
            parts.append(state.note)
        return " · ".join(parts)

    def _publish(self) -> None:
        """Current details for the Web UI, and the status search attribute when it changes."""
        workflow.set_current_details(self._details())
        published = (self._state.status, self._spec.version)
        if published != self._published:
            workflow.upsert_search_attributes(
                [
                    ROLLOUT_CHANNEL.value_set(self._spec.channel),
                    RELEASE_VERSION.value_set(self._spec.version),
                    ROLLOUT_STATUS.value_set(self._state.status),
                ]
            )
            self._published = published
