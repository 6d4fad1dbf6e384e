"""RolloutWorkflow: one per rollout (id `rollout-<id>`), the source of truth of its progress.

It loads the targets and cuts them into batches, takes in agent reports (signals), times jobs out
with durable timers, and answers admin actions as Updates whose validators refuse what does not
apply now. What each of these does to the rollout is the state machine's (rollout_machine);
this class keeps the Temporal side: handlers, the run loop, continue-as-new. Every change is
written to the read model through an activity (read_model_writer); a job is handed out only after
its row is written. Fleet-sized rollouts continue-as-new before Temporal's per-run signal and
history limits, carrying their state.
"""

import contextlib
import functools
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities.rollouts import TARGETS_TOO_LARGE, RolloutActivities
    from workflows.read_model_writer import (
        ACTIVITY_RETRY,
        ACTIVITY_TIMEOUT,
        CANCELLATION,
        JOBS_PER_WRITE,
        ReadModelWriter,
    )
    from workflows.rollout_machine import WORKFLOW_ACTOR, Action, Effects, RolloutMachine
    from workflows.rollout_models import (
        AbortInput,
        ActionInput,
        ActionResult,
        AdvanceInput,
        AuditEvent,
        BatchTargetsInput,
        Handouts,
        HandoutsQuery,
        JobForInstanceQuery,
        JobForInstanceResult,
        JobReportBatchSignal,
        JobReportSignal,
        JobState,
        LoadTargetsInput,
        PauseInput,
        ReportedStepsInput,
        ResumeInput,
        RetryInput,
        RolloutInput,
        RolloutResult,
        RolloutState,
        RolloutView,
        SnapshotTargetsInput,
        WaitStartedInput,
    )
    from workflows.search_attributes import RELEASE_VERSION, ROLLOUT_CHANNEL, ROLLOUT_STATUS

# Temporal refuses the 10,001st signal of a run; leave room for signals racing continue-as-new.
SIGNAL_BUDGET = 8_000
# At a batch boundary nothing is in flight, so continue-as-new earlier there.
BOUNDARY_SIGNAL_BUDGET = 4_000
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
PATCH_UNREACHABLE_STATUS = "unreachable-status"
# A release reads its batch's ids as a local activity, in the workflow task that started it:
# advance -> handout waits on one activity round trip (the jobs' write), not two (issue 13).
PATCH_BATCH_READ_LOCALLY = "batch-targets-local-activity"
# An admin action is answered once the read model shows it: agents' polls are answered from the
# read model, so an acknowledged pause or abort is in effect on every API process (issue 12).
PATCH_ANSWER_WHEN_WRITTEN = "answer-actions-when-written"
# ... unless PostgreSQL does not take that write (a lock, an outage): an abort must still be
# answered then; it is in effect for polls once written.
ANSWER_WRITE_WAIT = timedelta(seconds=5)
# Polls hand a job out once its row is written, so its agent can report before the workflow has
# seen the release's write end (a workflow task that failed or waited in between): such a report
# was ignored, and a job that finished meanwhile stayed pending until its deadline.
PATCH_REPORTS_WHILE_WRITTEN = "reports-while-written"
# The read is one indexed range: longer than this is an outage, retried after a durable timer
# (threshold 0), so queries and updates are answered between attempts.
BATCH_READ_TIMEOUT = timedelta(seconds=5)
# A look-up that only improves a message must not hold the rollout up for long.
LOOKUP_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3)

In = TypeVar("In", bound=ActionInput)
Handler = Callable[["RolloutWorkflow", In], Awaitable[ActionResult]]
AdminUpdate = workflow.UpdateMethodMultiParam[
    ["RolloutWorkflow", In], Coroutine[Any, Any, ActionResult]
]


def _admin_action(action: Action) -> Callable[[Handler[In]], AdminUpdate[In]]:
    """An admin action is an Update named `action`: its validator refuses at once what the state
    machine says does not apply now, and its handler asks again first (a replay runs handlers
    without their validators). It is answered once the read model shows what it did."""

    def decorate(handler: Handler[In]) -> AdminUpdate[In]:
        @functools.wraps(handler)
        async def checked(self: "RolloutWorkflow", input: In) -> ActionResult:
            self._ensure_allowed(action)
            result = await handler(self, input)
            if workflow.patched(PATCH_ANSWER_WHEN_WRITTEN):
                self._changed = True  # the run loop writes it now
                if not await self._writer.caught_up(ANSWER_WRITE_WAIT):
                    self._log_line(
                        f"{action} answered before PostgreSQL took its write"
                        f" ({ANSWER_WRITE_WAIT.total_seconds():g} s): polls see it once written"
                    )
            return result

        @functools.wraps(handler)  # Temporal wants the handler's parameters
        def validate(self: "RolloutWorkflow", input: In) -> None:
            self._ensure_allowed(action)

        update = workflow.update(name=action)(checked)
        update.validator(validate)
        return update

    return decorate


@workflow.defn(name="RolloutWorkflow")
class RolloutWorkflow:
    @workflow.init
    def __init__(self, input: RolloutInput) -> None:
        # State lives here, not in run(): signals delivered with the first task need it.
        self._spec = input.spec
        self._state = input.state or RolloutState()
        self._machine = RolloutMachine(self._spec, self._state, self._target_count())
        self._writer = ReadModelWriter(self._spec.id, self._state)
        self._changed = False
        self._signals = 0
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
        machine = self._machine
        if self._state.targets is None and self._state.target_count is None:
            await self._start()
        while True:
            self._changed = False
            await self._expire_overdue_jobs()
            self._apply(machine.settle(workflow.now()))
            if self._should_continue_as_new():
                self._log_line(f"continuing as new after {self._signals} signals")
                await self._let_handlers_finish()
                workflow.continue_as_new(RolloutInput(spec=self._spec, state=self._snapshot()))
            if (batch := machine.due_release(workflow.now())) is not None:
                await self._release_batch(batch, WORKFLOW_ACTOR)
                continue
            self._publish()
            await self._writer.write(machine)
            if machine.done:
                break
            await self._sleep_until_change()
        self._writer.close()
        self._publish()
        await self._drain()
        return RolloutResult(status=machine.status, counts=machine.counts())

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
        abort_stands = self._machine.status == "aborted" and workflow.patched(
            PATCH_ABORT_BEFORE_BATCH_1
        )
        started = self._apply(
            self._machine.targets_loaded(
                self._target_count() or 0, workflow.now(), abort_stands=abort_stands
            )
        )
        if started.release is not None:
            await self._release_batch(started.release, WORKFLOW_ACTOR)

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
            self._state.targets = []
            self._apply(
                self._machine.cannot_start(f"could not start: {cause.message}", workflow.now())
            )
            return False
        self._state.targets = result.instance_ids
        return True

    async def _end_cancelled(self) -> None:
        """A cancel request (Web UI, `temporal workflow cancel`) is an abort: open jobs are
        cancelled (no report can reach a closed run) and the read model says so before the run
        closes as cancelled."""
        self._apply(self._machine.cancel_requested(TEMPORAL_ACTOR, CANCEL_REASON, workflow.now()))
        self._writer.close()
        self._publish()
        await self._drain()

    async def _sleep_until_change(self) -> None:
        if self._writer.unwritten:
            return
        wake = self._machine.next_wake()
        timeout = None if wake is None else (wake - workflow.now()).total_seconds()
        if timeout is not None and timeout <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(lambda: self._changed, timeout=timeout)

    def _should_continue_as_new(self) -> bool:
        if self._machine.releasing or self._machine.done:
            return False
        if self._signals >= SIGNAL_BUDGET or workflow.info().is_continue_as_new_suggested():
            return True
        at_boundary = self._machine.status == "awaiting_advance"
        return at_boundary and self._signals >= BOUNDARY_SIGNAL_BUDGET

    async def _let_handlers_finish(self) -> None:
        """Before continue-as-new: no update may be cut off; reports keep arriving meanwhile,
        so what they changed after the last write is carried, not waited for. An update that
        waits for a write (`caught_up`) gets it meanwhile."""
        while True:
            await workflow.wait_condition(
                lambda: (
                    (workflow.all_handlers_finished() and not self._machine.releasing)
                    or self._writer.awaited
                )
            )
            await self._writer.write(self._machine)
            if workflow.all_handlers_finished() and not self._machine.releasing:
                return

    async def _drain(self) -> None:
        """Before the run returns: every handler finished and everything written."""
        while True:
            await self._let_handlers_finish()
            if not self._writer.unwritten:
                return

    def _snapshot(self) -> RolloutState:
        self._state.jobs = list(self._machine.jobs.values())
        self._writer.carry(self._state)
        return self._state

    # --- targets and batches: the machine is told counts and each batch's instance ids --------

    def _target_count(self) -> int | None:
        """None until the targets are known."""
        if self._state.targets is not None:  # a run started before targets-in-postgres
            return len(self._state.targets)
        return self._state.target_count

    async def _release_batch(self, number: int, actor: str) -> Effects:
        start = (number - 1) * self._spec.batch_size
        if self._state.targets is not None:  # a run started before targets-in-postgres
            instance_ids = self._state.targets[start : start + self._spec.batch_size]
        else:
            # Releasing (and running) while the ids are read: no second advance starts
            # meanwhile, and a pause or abort taken in meanwhile stands.
            self._apply(self._machine.reserve_release(number, actor))
            instance_ids = await self._batch_targets(start)
        return await self._write_release(
            self._machine.begin_release(number, instance_ids, actor, workflow.now(), _new_id)
        )

    async def _batch_targets(self, start: int) -> list[str]:
        input = BatchTargetsInput(
            rollout_id=self._spec.id, start=start, limit=self._spec.batch_size
        )
        try:
            if workflow.patched(PATCH_BATCH_READ_LOCALLY):
                result = await workflow.execute_local_activity_method(
                    RolloutActivities.batch_targets,
                    input,
                    start_to_close_timeout=BATCH_READ_TIMEOUT,
                    retry_policy=ACTIVITY_RETRY,
                    local_retry_threshold=timedelta(0),
                )
            else:
                result = await workflow.execute_activity_method(
                    RolloutActivities.batch_targets,
                    input,
                    start_to_close_timeout=ACTIVITY_TIMEOUT,
                    retry_policy=ACTIVITY_RETRY,
                )
        except CANCELLATION:
            self._machine.abandon_release()  # the cancel request ends the rollout
            raise
        return result.instance_ids

    async def _write_release(self, begun: Effects) -> Effects:
        """Released jobs are handed out only once their rows are written. A cancel request
        mid-write ends the release first: the rows may be written, so the jobs must be known,
        to be cancelled too."""
        self._apply(begun)
        try:
            await self._writer.write(self._machine, begun.new_jobs)
        except CANCELLATION as err:
            if is_cancelled_exception(err):
                self._apply(self._machine.end_release())
            raise
        return self._apply(self._machine.end_release())

    # --- time ---------------------------------------------------------------------------------

    async def _expire_overdue_jobs(self) -> None:
        overdue = self._machine.overdue(workflow.now())
        if not overdue:
            return
        steps: dict[str, str] = {}
        if workflow.patched(PATCH_TIMED_OUT_AT_REPORTED_STEP):
            # Looked up before they are settled, so no query sees a job timed out in a rollout
            # not yet paused for it; a report may settle one meanwhile.
            steps = await self._reported_steps(overdue)
        unreachable = workflow.patched(PATCH_UNREACHABLE_STATUS)
        self._apply(self._machine.time_out(overdue, steps, unreachable=unreachable))

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

    # --- effects ------------------------------------------------------------------------------

    def _apply(self, fx: Effects) -> Effects:
        """What the machine did: to the read model, to the log, and a wake-up for the run loop."""
        self._writer.record(fx)
        if fx.wake:
            self._changed = True
        for event in fx.events:
            self._log(event)
        return fx

    def _log(self, event: AuditEvent) -> None:
        """A line per audit event, naming its rollout (issue 13); Temporal skips it in replays."""
        detail = event.detail
        if event.action == "rollout.status_changed":
            reason = f" ({detail['reason']})" if "reason" in detail else ""
            text = f"{detail['from']} -> {detail['to']}{reason}"
        else:
            text = f"{event.action} by {event.actor}" + (f" {detail}" if detail else "")
        self._log_line(text)

    def _log_line(self, text: str) -> None:
        rollout_id = self._spec.id
        extra = {"rollout_id": rollout_id, "status": self._machine.status}
        workflow.logger.info("rollout %s: %s", rollout_id, text, extra=extra)

    def _ensure_allowed(self, action: Action) -> None:
        reason = self._machine.refusal(action)
        if reason is not None:
            raise ApplicationError(reason, type="RolloutActionRefused", non_retryable=True)

    def _answer(self, fx: Effects) -> ActionResult:
        state = self._state
        return ActionResult(
            status=state.status, current_batch=state.current_batch, message=fx.answer
        )

    # --- updates: admin actions, refused at once by their validators -------------------------

    @_admin_action("advance")
    async def advance(self, input: AdvanceInput) -> ActionResult:
        batch = self._apply(self._machine.advance(input.actor)).release
        assert batch is not None
        return self._answer(await self._release_batch(batch, input.actor))

    @_admin_action("pause")
    async def pause(self, input: PauseInput) -> ActionResult:
        return self._answer(self._apply(self._machine.pause(input.actor, input.reason)))

    @_admin_action("resume")
    async def resume(self, input: ResumeInput) -> ActionResult:
        return self._answer(self._apply(self._machine.resume(input.actor, workflow.now())))

    @_admin_action("retry")
    async def retry(self, input: RetryInput) -> ActionResult:
        begun = self._machine.begin_retry(input.actor, workflow.now(), _new_id)
        return self._answer(await self._write_release(begun))

    @_admin_action("abort")
    async def abort(self, input: AbortInput) -> ActionResult:
        return self._answer(
            self._apply(self._machine.abort(input.actor, input.reason, workflow.now()))
        )

    @workflow.update(name="wait_started")
    async def wait_started(self, input: WaitStartedInput) -> ActionResult:
        """Answers once batch 1 is handed out (or the rollout finished): for update-with-start."""
        machine = self._machine
        await workflow.wait_condition(
            lambda: (machine.state.current_batch > 0 and not machine.releasing) or machine.finished
        )
        state = self._state
        return ActionResult(
            status=state.status,
            current_batch=state.current_batch,
            message=state.note or "batch 1 released",
        )

    # --- signals: agent reports, and pause/resume for operators in the Temporal CLI ----------

    @workflow.signal(name="job_report")
    def job_report(self, report: JobReportSignal) -> None:
        """Idempotent: unknown job, another instance's job or a settled job change nothing."""
        self._signals += 1
        self._take_report(report)

    @workflow.signal(name="job_report_batch")
    def job_report_batch(self, batch: JobReportBatchSignal) -> None:
        """`job_report` for each, in order: how the API delivers reports that arrive together."""
        self._signals += 1
        for report in batch.reports:
            self._take_report(report)

    def _take_report(self, report: JobReportSignal) -> None:
        machine = self._machine
        while_written = machine.being_written(report.job_id) and workflow.patched(
            PATCH_REPORTS_WHILE_WRITTEN
        )
        self._apply(machine.report(report, while_written=while_written))

    @workflow.signal(name="pause")
    def pause_signal(self, input: PauseInput | None = None) -> None:
        self._signals += 1
        input = input or PauseInput()
        if self._machine.refusal("pause") is None:
            self._apply(self._machine.pause(input.actor, input.reason, via="signal"))

    @workflow.signal(name="resume")
    def resume_signal(self, input: ResumeInput | None = None) -> None:
        self._signals += 1
        input = input or ResumeInput()
        if self._machine.refusal("resume") is None:
            self._apply(self._machine.resume(input.actor, workflow.now(), via="signal"))

    # --- queries ------------------------------------------------------------------------------

    @workflow.query(name="view")
    def view(self) -> RolloutView:
        machine, state = self._machine, self._state
        return RolloutView(
            **machine.snapshot().model_dump(), note=state.note, jobs=list(machine.jobs.values())
        )

    @workflow.query(name="job_for_instance")
    def job_for_instance(self, query: JobForInstanceQuery) -> JobForInstanceResult:
        """The job an agent may run now (PROTOCOL §5): none while paused or finished."""
        return JobForInstanceResult(job=self._machine.handed_out().get(query.instance_id))

    @workflow.query(name="handouts")
    def handouts(self, query: HandoutsQuery) -> Handouts:
        return Handouts(jobs=self._machine.handed_out())

    # --- the Web UI ---------------------------------------------------------------------------

    def _publish(self) -> None:
        """Current details for the Web UI, and the status search attribute when it changes."""
        workflow.set_current_details(self._machine.details())
        published = (self._machine.status, self._spec.version)
        if published != self._published:
            workflow.upsert_search_attributes(
                [
                    ROLLOUT_CHANNEL.value_set(self._spec.channel),
                    RELEASE_VERSION.value_set(self._spec.version),
                    ROLLOUT_STATUS.value_set(self._machine.status),
                ]
            )
            self._published = published


def _new_id() -> str:
    """Job ids: deterministic in a workflow, so a replay makes the same ones."""
    return workflow.uuid4().hex
