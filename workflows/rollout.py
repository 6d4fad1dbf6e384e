"""RolloutWorkflow: one per rollout (id `rollout-<id>`), the source of truth of its progress.

Every decision is the state machine's (rollout_machine); this class keeps the Temporal side:
handlers (admin_updates, agent reports as signals), the run loop with its durable timers, and
continue-as-new before Temporal's per-run limits. Changes reach PostgreSQL through
read_model_writer; a job is handed out only once its row is written."""

import contextlib
from datetime import timedelta

from temporalio import workflow
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from domain.rollouts import rollout_workflow_id
    from workflows import lookups, rollout_text
    from workflows.admin_updates import admin_action
    from workflows.read_model_writer import CANCELLATION, ReadModelWriter
    from workflows.rollout_machine import WORKFLOW_ACTOR, Effects, RolloutMachine
    from workflows.rollout_models import (
        AbortInput,
        ActionResult,
        AdvanceInput,
        FreezeInput,
        JobForInstanceQuery,
        JobForInstanceResult,
        JobReportBatchSignal,
        JobReportSignal,
        PauseInput,
        ResumeInput,
        RetryInput,
        RolloutInput,
        RolloutResult,
        RolloutState,
        RolloutView,
        ThawInput,
        WaitStartedInput,
    )
    from workflows.search_attributes import start_attributes, start_summary
    from workflows.web_ui import WebUi

# Temporal refuses the 10,001st signal of a run; leave room for signals racing continue-as-new.
SIGNAL_BUDGET = 8_000
# At a batch boundary nothing is in flight, so continue-as-new earlier there.
BOUNDARY_SIGNAL_BUDGET = 4_000
# Temporal suggests continue-as-new early (thousands of events, a few MB), while a batch's
# reports still arrive: taken there, it cost the worker 2-4 CPU-s and made that batch the
# slowest of a 10,000-host rollout. The suggestion is taken at the next batch boundary, or
# mid-batch only past these, a fifth of the hard limits (51,200 events, 50 MB).
HISTORY_EVENT_BUDGET = 10_240
HISTORY_BYTES_BUDGET = 10 * 1024 * 1024
# Who ends a rollout whose run was asked to cancel (Web UI "Request Cancellation", CLI cancel).
TEMPORAL_ACTOR = "temporal"
CANCEL_REASON = "cancellation requested in Temporal"


@workflow.defn(name="RolloutWorkflow")
class RolloutWorkflow:
    @workflow.init
    def __init__(self, input: RolloutInput) -> None:
        # State lives here, not in run(): signals delivered with the first task need it.
        self._spec = input.spec
        self._state = input.state or RolloutState()
        self._machine = RolloutMachine(self._spec, self._state, self._state.target_count)
        self._writer = ReadModelWriter(self._spec.id, self._state)
        self._changed = False
        self._signals = 0
        self._web_ui = WebUi()

    @workflow.run
    async def run(self, input: RolloutInput) -> RolloutResult:
        try:
            return await self._run()
        except CANCELLATION as err:
            # A cancel request reaches the run as asyncio's CancelledError, or as the
            # ActivityError of the activity it was awaiting: it ends the rollout as an abort.
            if is_cancelled_exception(err):
                await self._end_cancelled()
            raise

    async def _run(self) -> RolloutResult:
        machine = self._machine
        self._apply(machine.window_changed(workflow.now()))  # closed: batch 1 waits for it
        if self._state.target_count is None:
            await self._start()
        while True:
            self._changed = False
            opened = self._apply(machine.window_changed(workflow.now()))
            if opened.start_batch is not None:  # held before batch 1
                await self._start_batch(opened.start_batch, WORKFLOW_ACTOR)
                continue
            await self._expire_overdue_jobs()
            self._apply(machine.settle(workflow.now()))
            if self._should_continue_as_new():
                self._log_line(f"continuing as new after {self._signals} signals")
                await self._let_handlers_finish()
                self._writer.carry(self._state)
                workflow.continue_as_new(RolloutInput(spec=self._spec, state=machine.carry()))
            if machine.gates_due():
                settled, until = self._state.current_batch, machine.gates_until(workflow.now())
                results = await lookups.watch_gates(self._spec, until, workflow.now())
                self._apply(machine.gates_judged(settled, results, workflow.now()))
                continue
            if (batch := machine.due_batch(workflow.now())) is not None:
                await self._start_batch(batch, WORKFLOW_ACTOR)
                continue
            self._web_ui.publish(self._machine)
            await self._writer.write(machine)
            if machine.done:
                break
            await self._sleep_until_change()
        self._writer.close()
        self._web_ui.publish(self._machine)
        await self._drain()
        if self._state.auto_revert_reason is not None:
            await self._auto_revert(self._state.auto_revert_reason)
        return RolloutResult(status=machine.status, counts=machine.counts())

    async def _auto_revert(self, reason: str) -> None:
        """autoRevert: the revert's rows are stored by an activity (once, whatever retries), then
        it runs as a child workflow that outlives this one: the history shows one story."""
        spec = await lookups.prepare_auto_revert(self._spec, reason)
        if spec is None:
            return  # nothing to revert, or a freeze holds the channel: audited by the activity
        with contextlib.suppress(WorkflowAlreadyStartedError):  # started before a crash
            await workflow.start_child_workflow(
                RolloutWorkflow.run,
                RolloutInput(spec=spec),
                id=rollout_workflow_id(spec.id),
                task_queue=workflow.info().task_queue,
                parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                search_attributes=start_attributes(spec),
                static_summary=start_summary(spec),
            )
        self._log_line(f"reverting the hosts it updated: rollout {spec.id}")

    async def _start(self) -> None:
        count = self._state.target_count = await lookups.snapshot_targets(self._spec)
        started = self._apply(self._machine.targets_loaded(count, workflow.now()))
        if started.start_batch is not None:
            await self._start_batch(started.start_batch, WORKFLOW_ACTOR)

    async def _end_cancelled(self) -> None:
        """Open jobs are cancelled (no report can reach a closed run) and the read model says so
        before the run closes as cancelled."""
        self._apply(self._machine.cancel_requested(TEMPORAL_ACTOR, CANCEL_REASON, workflow.now()))
        self._writer.close()
        self._web_ui.publish(self._machine)
        await self._drain()

    async def _sleep_until_change(self) -> None:
        if self._writer.unwritten:
            return
        wake = self._machine.next_wake(workflow.now())
        timeout = None if wake is None else (wake.at - workflow.now()).total_seconds()
        if timeout is not None and timeout <= 0:
            return
        summary = None if wake is None else wake.summary
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(
                lambda: self._changed, timeout=timeout, timeout_summary=summary
            )

    def _should_continue_as_new(self) -> bool:
        if self._machine.handing_out or self._machine.done:
            return False
        info = workflow.info()
        if (
            self._signals >= SIGNAL_BUDGET
            or info.get_current_history_length() >= HISTORY_EVENT_BUDGET
            or info.get_current_history_size() >= HISTORY_BYTES_BUDGET
        ):
            return True
        at_boundary = self._machine.status == "awaiting_advance"
        suggested = info.is_continue_as_new_suggested()
        return at_boundary and (suggested or self._signals >= BOUNDARY_SIGNAL_BUDGET)

    async def _let_handlers_finish(self) -> None:
        """Before continue-as-new: no update may be cut off; reports keep arriving meanwhile,
        so what they changed after the last write is carried, not waited for. An update that
        waits for a write (`caught_up`) gets it meanwhile."""
        machine = self._machine
        while True:
            await workflow.wait_condition(
                lambda: (
                    (workflow.all_handlers_finished() and not machine.handing_out)
                    or self._writer.awaited
                )
            )
            await self._writer.write(machine)
            if workflow.all_handlers_finished() and not machine.handing_out:
                return

    async def _drain(self) -> None:
        """Before the run returns: every handler finished and everything written."""
        while True:
            await self._let_handlers_finish()
            if not self._writer.unwritten:
                return

    # --- handing out: a batch's ids are read from the targets snapshot, its jobs written ------

    async def _start_batch(self, number: int, actor: str) -> Effects:
        # Handing out while the ids are read: no second advance starts meanwhile, and a pause or
        # abort taken in meanwhile stands.
        self._apply(self._machine.reserve_batch(number, actor))
        try:
            if self._spec.include_late_joiners and number > 1:
                self._apply(self._machine.targets_grew(await lookups.late_targets(self._spec)))
            start, size = self._machine.batch_range(number)
            hosts = await lookups.batch_hosts(self._spec.id, number, start, size)
        except CANCELLATION:
            self._machine.abandon_batch()  # the cancel request ends the rollout
            raise
        begun = self._machine.begin_batch(number, hosts, actor, workflow.now(), _new_id)
        return await self._hand_out(begun)

    async def _hand_out(self, begun: Effects) -> Effects:
        """New jobs are handed out only once their rows are written. A cancel request mid-write
        ends the hand-out first: the rows may be written, so the jobs must be known, to be
        cancelled too."""
        self._apply(begun)
        try:
            await self._writer.write(self._machine, begun.new_jobs)
        except CANCELLATION as err:
            if is_cancelled_exception(err):
                self._apply(self._machine.end_handout())
            raise
        return self._apply(self._machine.end_handout())

    # --- time ---------------------------------------------------------------------------------

    async def _expire_overdue_jobs(self) -> None:
        if overdue := self._machine.overdue(workflow.now()):
            # Looked up before they are settled, so no query sees a job timed out in a rollout
            # not yet paused for it; a report may settle one meanwhile.
            self._apply(self._machine.time_out(overdue, await lookups.reported_steps(overdue)))

    # --- effects ------------------------------------------------------------------------------

    def _apply(self, fx: Effects) -> Effects:
        """What the machine did: to the read model, to the log, and a wake-up for the run loop."""
        self._writer.record(fx)
        if fx.wake:
            self._changed = True
        for event in fx.events:
            self._log_line(rollout_text.log_line(event))
        return fx

    def _log_line(self, text: str) -> None:
        """Names its rollout in the text and as extra; Temporal skips it in replays."""
        extra = {"rollout_id": self._spec.id, "status": self._machine.status}
        workflow.logger.info("rollout %s: %s", self._spec.id, text, extra=extra)

    @property
    def machine(self) -> RolloutMachine:
        return self._machine

    async def written(self, purpose: str, wait: timedelta) -> None:
        self._changed = True  # the run loop writes it now
        if not await self._writer.caught_up(wait, purpose):
            self._log_line(f"{purpose}: not yet written after {wait}; polls see it once written")

    def _answer(self, fx: Effects) -> ActionResult:
        return self._machine.answer(fx.answer)

    # --- updates: admin actions, refused at once by their validators -------------------------

    @admin_action("advance")
    async def advance(self, input: AdvanceInput) -> ActionResult:
        fx = self._machine.advance(input.actor, force=input.force, now=workflow.now())
        batch = self._apply(fx).start_batch
        assert batch is not None
        return self._answer(await self._start_batch(batch, input.actor))

    @admin_action("pause")
    async def pause(self, input: PauseInput) -> ActionResult:
        return self._answer(self._apply(self._machine.pause(input.actor, input.reason)))

    @admin_action("resume")
    async def resume(self, input: ResumeInput) -> ActionResult:
        return self._answer(self._apply(self._machine.resume(input.actor, workflow.now())))

    @admin_action("retry")
    async def retry(self, input: RetryInput) -> ActionResult:
        begun = self._machine.begin_retry(input.actor, workflow.now(), _new_id)
        return self._answer(await self._hand_out(begun))

    @admin_action("freeze")
    async def freeze(self, input: FreezeInput) -> ActionResult:
        fx = self._machine.freeze(input.actor, input.reason, workflow.now())
        return self._answer(self._apply(fx))

    @admin_action("thaw")
    async def thaw(self, input: ThawInput) -> ActionResult:
        fx = self._apply(self._machine.thaw(input.actor, workflow.now()))
        if fx.start_batch is not None:  # frozen before batch 1
            return self._answer(await self._start_batch(fx.start_batch, input.actor))
        return self._answer(fx)

    @admin_action("abort")
    async def abort(self, input: AbortInput) -> ActionResult:
        fx = self._machine.abort(
            input.actor, input.reason, workflow.now(), then_revert=not input.by_revert
        )
        return self._answer(self._apply(fx))

    @workflow.update(name="wait_started")
    async def wait_started(self, input: WaitStartedInput) -> ActionResult:
        """Answers once batch 1 is handed out, or the rollout waits for its window or a freeze
        before it, or finished: for update-with-start."""
        machine, state = self._machine, self._state
        await workflow.wait_condition(
            lambda: (
                (state.current_batch > 0 and not machine.handing_out)
                or machine.finished
                or machine.status == "waiting"
            )
        )
        return machine.answer(state.note or "batch 1 released")

    # --- signals: agent reports, and pause/resume for operators in the Temporal CLI ----------

    @workflow.signal(name="job_report")
    def job_report(self, report: JobReportSignal) -> None:
        """Idempotent: unknown job, another instance's job or a settled job change nothing."""
        self._signals += 1
        self._apply(self._machine.report(report))

    @workflow.signal(name="job_report_batch")
    def job_report_batch(self, batch: JobReportBatchSignal) -> None:
        """`job_report` for each, in order: how the API delivers reports that arrive together."""
        self._signals += 1
        for report in batch.reports:
            self._apply(self._machine.report(report))

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

    # --- queries and the Web UI ---------------------------------------------------------------

    @workflow.query(name="view")
    def view(self) -> RolloutView:
        return self._machine.view(self._writer.unwritten_jobs)

    @workflow.query(name="job_for_instance")
    def job_for_instance(self, query: JobForInstanceQuery) -> JobForInstanceResult:
        """The job an agent may run now (PROTOCOL §5): none while paused or finished."""
        return JobForInstanceResult(job=self._machine.handed_out().get(query.instance_id))


def _new_id() -> str:
    """Job ids: deterministic in a workflow, so a replay makes the same ones."""
    return workflow.uuid4().hex
