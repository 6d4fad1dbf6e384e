"""The rollout state machine: every status a rollout and its jobs go through, every transition
and every refusal, in plain Python.

RolloutWorkflow holds one RolloutMachine and does what the machine cannot: Temporal (timers,
activities, continue-as-new) and I/O. The machine imports nothing of Temporal and reads no clock
and no randomness: a call takes the time (`now`) and, where it creates jobs, an id factory, and
returns `Effects`, what happened, which the workflow writes to the read model. So every transition
is tested without servers (tests/test_rollout_machine.py), and a replay takes the same path, as
the workflow passes `workflow.now()` and `workflow.uuid4()`.

The machine does not hold the targets: it is told their count, and each batch's instance ids as
the workflow starts it. Its state is the `RolloutState` carried through continue-as-new (the
read-model writer owns that model's `revision` and `unwritten_*`).

Words: a *release* is a signed manifest; a batch (or a retry) is *handed out*: its jobs are
created, written to the read model, then given to the hosts that poll.
"""

from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Literal

from contract.wire import (
    FINISHED_ROLLOUT_STATUSES,
    OPEN_JOB_STATUSES,
    TERMINAL_JOB_STATUSES,
    RolloutStatus,
    wire_deadline,
)
from domain.gates import GateResult
from domain.plans import batch_sizes, batch_starts, describe
from domain.rollouts import RolloutSnapshot, RolloutSpec
from domain.windows import describe_opening, is_open, next_change
from workflows import rollout_text
from workflows.rollout_models import (
    FAILED_JOB_STATUSES,
    RETRYABLE_JOB_STATUSES,
    UNREACHABLE,
    ActionResult,
    AuditEvent,
    CarriedJobs,
    HandedOutJob,
    JobReportSignal,
    JobState,
    RolloutState,
    RolloutView,
)

Action = Literal["advance", "pause", "resume", "retry", "abort", "freeze", "thaw"]
# What pauses a rollout by itself: more failed jobs than maxFailures, or more unreachable hosts
# than maxUnreachable. A resume accepts what was counted of that kind.
Limit = Literal["failures", "unreachable"]
WORKFLOW_ACTOR = "workflow"
# Jobs a `view` answer lists in full (about 250 bytes each); a larger batch lists its changes.
VIEW_JOBS = 2_000

# --- the graph -------------------------------------------------------------------------------
# A rollout is `running` from its start (batch 0 until batch 1 is released). `paused` has a
# cause, with its own reason: an operator, the failure threshold (`paused_for_failures`) or the
# unreachable threshold (`paused_for_unreachable`), a resume accepting what was counted of that
# kind so far; planned: a gate that has not passed.
ROLLOUT_GRAPH: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "running": frozenset({"awaiting_advance", "paused", "completed", "aborted", "waiting"}),
        "awaiting_advance": frozenset({"running", "paused", "aborted", "waiting"}),
        "paused": frozenset({"running", "aborted"}),
        # Held by a fleet freeze (a maintenance window, planned): nothing is released or handed
        # out, running jobs finish; it goes back to where it was when the freeze ends.
        "waiting": frozenset({"running", "awaiting_advance", "paused", "aborted"}),
        "completed": frozenset(),
        "aborted": frozenset(),
    }
)
# Declared in the graph above, reached by no transition yet.
PLANNED_STATUSES: frozenset[str] = frozenset()


class RefusedAction(Exception):
    """An admin action that does not apply now; the message says why."""


@dataclass
class Effects:
    """What one call changed, for the workflow to write and act on."""

    events: list[AuditEvent] = field(default_factory=list)  # for the audit log, in order
    jobs: set[str] = field(default_factory=set)  # ids of jobs whose rows changed
    messages: dict[str, str] = field(default_factory=dict)  # a report's message, by job id
    new_jobs: list[JobState] = field(default_factory=list)  # to write before handing out
    start_batch: int | None = None  # the batch the workflow must now start (begin_batch)
    answer: str = ""  # what an admin action answers
    wake: bool = False  # the run loop has something to do


@dataclass(frozen=True)
class Wake:
    """When the run loop must wake without an event, and why (its timer's summary)."""

    at: datetime
    summary: str


@dataclass
class _Handout:
    """A batch or a retry whose job rows are being written: its jobs are handed out only after.
    Reports may reach its jobs meanwhile (polls hand a job out once its row is written)."""

    new_jobs: dict[str, JobState]  # by id
    actor: str
    batch: int | None = None  # None for a retry
    retried: list[JobState] = field(default_factory=list)


class RolloutMachine:
    """One rollout: its status, its current batch's jobs, what each event does to them and which
    admin actions apply. Methods named for events change state and return `Effects`; the rest
    only read."""

    def __init__(self, spec: RolloutSpec, state: RolloutState, target_count: int | None) -> None:
        self.spec = spec
        self.state = state
        self.target_count = target_count  # None until the targets are loaded
        self.jobs: dict[str, JobState] = {job.id: job for job in state.carried_jobs.unpack()}
        state.carried_jobs = CarriedJobs()  # the machine's jobs are the truth from here on
        self.open_by_instance = {
            job.instance_id: job.id for job in self.jobs.values() if job.status in OPEN_JOB_STATUSES
        }
        self._handout: _Handout | None = None
        self._sizes: tuple[int, list[int]] | None = None  # (target count, the plan's sizes)
        # Kept as jobs move, so a workflow task's work grows with the reports it takes in, not
        # with the batch: the current batch's latest jobs by status, and a time no timed job's
        # deadline is before (None: no timed job), made exact whenever it is reached.
        self._counts: Counter[str] = Counter(job.status for job in self.latest_jobs())
        self._earliest: datetime | None = None
        self._find_earliest()

    # --- where it stands ----------------------------------------------------------------------

    @property
    def status(self) -> RolloutStatus:
        return self.state.status

    @property
    def finished(self) -> bool:
        return self.state.status in FINISHED_ROLLOUT_STATUSES

    @property
    def handing_out(self) -> bool:
        return self._handout is not None

    @property
    def done(self) -> bool:
        """Nothing left to happen: completed, or aborted with every job settled."""
        if self.state.status == "completed":
            return True
        return self.state.status == "aborted" and not self.open_by_instance

    @property
    def total_batches(self) -> int:
        return len(self._batch_sizes())

    def batch_range(self, number: int) -> tuple[int, int]:
        """Batch `number`'s offset in the targets and its size, as the plan cuts them."""
        sizes = self._batch_sizes()
        return batch_starts(sizes)[number - 1], sizes[number - 1]

    def _batch_sizes(self) -> list[int]:
        count = self.target_count or 0
        if self._sizes is None or self._sizes[0] != count:
            self._sizes = (count, batch_sizes(self.spec.batch_size, self.spec.plan, count))
        return self._sizes[1]

    def snapshot(self) -> RolloutSnapshot:
        """Where the rollout stands, as its view and its read-model writes both say it."""
        state = self.state
        return RolloutSnapshot(
            status=state.status,
            paused_reason=state.paused_reason,
            current_batch=state.current_batch,
            total_batches=self.total_batches,
            target_count=self.target_count or 0,
            details=self.details(),
            finished_at=state.finished_at,
        )

    def carry(self) -> RolloutState:
        """The state the next run starts from (continue-as-new), the jobs with it."""
        self.state.carried_jobs = CarriedJobs.pack(self.jobs.values())
        return self.state

    def view(self, unwritten: Collection[str]) -> RolloutView:
        """The live state the `view` query answers: fresher than the read model. A large batch
        lists only its `unwritten` jobs (the rest are as the read model shows them)."""
        jobs = list(self.jobs.values())
        complete = len(jobs) <= VIEW_JOBS
        if not complete:
            jobs = [self.jobs[i] for i in sorted(unwritten) if i in self.jobs][:VIEW_JOBS]
        return RolloutView(
            **self.snapshot().model_dump(), note=self.state.note, jobs=jobs, jobs_complete=complete
        )

    def answer(self, message: str) -> ActionResult:
        """What an admin action (or the start) answers: where the rollout stands, and `message`."""
        state = self.state
        return ActionResult(status=state.status, current_batch=state.current_batch, message=message)

    def latest_jobs(self) -> list[JobState]:
        return [job for job in self.jobs.values() if not job.superseded]

    def counts(self) -> dict[str, int]:
        """Jobs by status, the latest attempt of each released target."""
        counts = dict(self.state.past_counts)
        for status, count in self._counts.items():
            if count:
                counts[status] = counts.get(status, 0) + count
        return counts

    def details(self) -> str:
        return rollout_text.details(
            status=self.state.status,
            paused_reason=self.state.paused_reason,
            hold_reason=self.state.hold_text,
            late_joiners=self.state.late_joiners,
            gates=self._gates_text(),
            note=self.state.note,
            current_batch=self.state.current_batch,
            total_batches=self.total_batches,
            counts=self.counts(),
            plan=describe(self.spec.plan) if self.spec.plan else None,
        )

    def handed_out(self) -> dict[str, HandedOutJob]:
        """The job each host may run now (PROTOCOL §5): none while paused or finished."""
        if self.state.status == "paused" or self.finished:
            return {}
        # Built without validation (the fields are the machine's own): a query on a batch of
        # 1,000 jobs must answer well within the SDK's 2 s deadlock detection on a loaded host.
        return {
            instance_id: HandedOutJob.model_construct(
                id=job_id,
                rollout_id=self.spec.id,
                release_id=self.spec.manifest_id,
                deadline=wire_deadline(self.jobs[job_id].deadline),
            )
            for instance_id, job_id in self.open_by_instance.items()
        }

    def refusal(
        self, action: Action, *, force: bool = False, now: datetime | None = None
    ) -> str | None:
        """Why `action` does not apply now, or None. `force`: an advance or retry outside the
        maintenance window; `now` says when it opens."""
        state = self.state
        if self.finished:
            return f"rollout is {state.status}; {action} does not apply to a finished rollout"
        # Abort (and a fleet freeze) applies at any point: before batch 1 and while jobs are
        # being handed out.
        if action in ("freeze", "thaw"):
            return None
        releases = action in ("advance", "retry")
        if releases and state.frozen_reason is not None:
            return (
                f"the fleet is frozen ({state.frozen_reason}): nothing is released until it is"
                " lifted"
            )
        if releases and state.window_closed and not force:
            assert self.spec.window is not None
            opening = f" ({describe_opening(self.spec.window, now)})" if now else ""
            return (
                f"outside the rollout's maintenance window{opening}; {action} with force to"
                " release it now"
            )
        # Held by its window before batch 1 (targets known): a forced advance releases batch 1.
        forced_start = action == "advance" and state.status == "waiting" and self.target_count
        if state.current_batch == 0 and action != "abort" and not forced_start:
            return "the rollout is starting (batch 1 is not handed out yet); try again in a moment"
        if self.handing_out and releases:
            return "jobs are being handed out; try again in a moment"
        if action == "advance":
            if state.status == "paused":
                return f"rollout is paused ({state.paused_reason}); resume it first"
            if state.status == "waiting" and (
                forced_start or state.held_from == "awaiting_advance"
            ):
                return None  # held by the window only, and forced
            if state.status != "awaiting_advance":
                unsettled = len(self.open_by_instance)
                return (
                    f"batch {state.current_batch}/{self.total_batches} is still running"
                    f" ({unsettled} jobs not settled)"
                )
        if action == "pause" and state.status == "paused":
            return f"rollout is already paused ({state.paused_reason})"
        if action == "resume" and state.status != "paused":
            return f"rollout is not paused (it is {state.status})"
        if action == "retry" and not self._retryable():
            return (
                f"batch {state.current_batch} has no failed, rolled-back, timed-out or"
                " unreachable job to retry"
            )
        return None

    # --- time ---------------------------------------------------------------------------------

    def next_wake(self, now: datetime) -> "Wake | None":
        """When time alone changes something: a job's deadline, the end of a bake, or the
        maintenance window opening or closing."""
        state = self.state
        window = self.spec.window
        if window is not None and not self.finished:
            change = next_change(window, now)
            soonest = min(d for d in (self._earliest, self._auto_advance_due_at(), change) if d)
            if soonest == change:
                word = "closes" if is_open(window, now) else "opens"
                return Wake(change, f"the maintenance window {word}")
        deadline = self._earliest
        due = self._auto_advance_due_at()
        if due is not None and (deadline is None or due <= deadline):
            return Wake(
                due, f"bake after batch {state.current_batch}, then batch {state.current_batch + 1}"
            )
        if deadline is None:
            return None
        return Wake(deadline, f"job deadline in batch {state.current_batch}")

    def overdue(self, now: datetime) -> list[JobState]:
        if self._earliest is None or self._earliest > now:
            return []
        return [job for job in self._find_earliest() if job.deadline <= now]

    def due_batch(self, now: datetime) -> int | None:
        """The batch auto-advance starts now that its bake is over, if it is (and its
        maintenance window is open, and its gates passed)."""
        due = self._auto_advance_due_at()
        if due is None or now < due or self.handing_out or self.state.window_closed:
            return None
        if self.spec.gates and self.state.gates_passed_batch != self.state.current_batch:
            return None
        return self.state.current_batch + 1

    # --- start --------------------------------------------------------------------------------

    def targets_loaded(self, count: int, now: datetime) -> Effects:
        """The targets are known. An abort that came while they loaded stands; no target
        completes the rollout."""
        fx = Effects()
        self.target_count = count
        if self.state.status == "aborted":
            self.state.note = "aborted before batch 1 was released"
            return fx
        detail = {"targets": count, "batches": self.total_batches}
        self._event(fx, WORKFLOW_ACTOR, "rollout.started", detail)
        if count and self.state.status == "waiting":
            return fx  # batch 1 is released when the freeze ends (thaw)
        if count:
            fx.start_batch = 1
            return fx
        self.state.note = (
            f"no instance on channel {self.spec.channel} is below {self.spec.version}:"
            " nothing to update"
        )
        self._finish(fx, "completed", now)
        return fx

    # --- handing out -----------------------------------------------------------------------------

    def begin_batch(
        self,
        batch: int,
        instance_ids: Sequence[str],
        actor: str,
        now: datetime,
        new_id: Callable[[], str],
    ) -> Effects:
        """Batch `batch` starts: its jobs are created, to be written before handed out."""
        reserved = self._handout is not None and self._handout.batch == batch
        new_jobs = [
            self._new_job(instance_id, batch, 1, now, new_id) for instance_id in instance_ids
        ]
        self._handout = _Handout(new_jobs=_by_id(new_jobs), actor=actor, batch=batch)
        fx = Effects(new_jobs=new_jobs)
        if not reserved:  # else a pause or abort taken in while its ids were read stands
            self._set_status(fx, "running", actor)
        return fx

    def reserve_batch(self, batch: int, actor: str) -> Effects:
        """Batch `batch` starts while its instance ids are read (from the targets snapshot):
        the rollout runs, and no other hand-out starts meanwhile."""
        self._handout = _Handout(new_jobs={}, actor=actor, batch=batch)
        fx = Effects()
        self._set_status(fx, "running", actor)
        return fx

    def abandon_batch(self) -> None:
        """The reserved batch's ids were never read (the run is being cancelled)."""
        self._handout = None

    def begin_retry(self, actor: str, now: datetime, new_id: Callable[[], str]) -> Effects:
        """The current batch's failed, rolled-back and timed-out jobs run again, as new jobs."""
        self._require("retry")
        failed = self._retryable()
        new_jobs = [
            self._new_job(j.instance_id, j.batch, j.attempt + 1, now, new_id) for j in failed
        ]
        self._handout = _Handout(new_jobs=_by_id(new_jobs), actor=actor, retried=failed)
        fx = Effects(new_jobs=new_jobs)
        if self.state.status != "paused":
            self._set_status(fx, "running", actor)
        return fx

    def end_handout(self) -> Effects:
        """The new jobs' rows are written: they are handed out from now on."""
        handout = self._handout
        assert handout is not None, "end_handout without begin_batch or begin_retry"
        self._handout = None
        fx = Effects()
        state = self.state
        if handout.batch is not None:
            self._archive_current_batch()
            state.current_batch = handout.batch
        for job in handout.retried:
            job.superseded = True
            self._counts[job.status] -= 1
        self._add_jobs(fx, list(handout.new_jobs.values()))
        if handout.batch is not None:
            detail = {"batch": handout.batch, "jobs": len(handout.new_jobs)}
            self._event(fx, handout.actor, "rollout.batch_released", detail)
        if state.status == "aborted":  # aborted while the rows were being written
            self._cancel_pending(fx)
        elif handout.retried and self._paused_for_limit() and self._exceeded() is None:
            # The retried jobs no longer count: a pause for failures (or unreachable hosts) is over.
            self._clear_pause()
            self._set_status(fx, "running", handout.actor)
        if handout.batch is not None:
            fx.answer = f"released batch {state.current_batch}/{self.total_batches}"
        else:
            instances = [job.instance_id for job in handout.retried]
            names = {"instances": instances[: rollout_text.REASON_NAMES]}
            self._event(fx, handout.actor, "rollout.retry", names)
            fx.answer = f"released {len(instances)} jobs again"
        return fx

    # --- reports and time ---------------------------------------------------------------------

    def report(self, report: JobReportSignal) -> Effects:
        """Idempotent: unknown job, another instance's job or a settled job change nothing. A job
        still being written counts: polls hand a job out once its row is in PostgreSQL, so its
        reports may come before the hand-out ends."""
        fx = Effects()
        job = self.jobs.get(report.job_id)
        if job is None and self._handout is not None:
            job = self._handout.new_jobs.get(report.job_id)
        if job is None or job.instance_id != report.instance_id:
            return fx
        if job.status in TERMINAL_JOB_STATUSES:
            return fx
        if report.status == "in_progress":
            if job.status == "in_progress" and (report.step is None or report.step == job.step):
                return fx
            self._move(job, "in_progress")
            job.step = report.step or job.step
            self._may_end_at(job.deadline)  # a job withheld by a pause runs again
            fx.jobs.add(job.id)
            fx.wake = True
        else:
            self._settle_job(fx, job, report.status, report.step)
        if report.message:
            fx.messages[job.id] = report.message
        return fx

    def time_out(self, overdue: list[JobState], steps: Mapping[str, str]) -> Effects:
        """Overdue jobs (from `overdue`) end `timed_out` at the step their agent last reported
        (`steps`, from the read model), unless a report settled them meanwhile; a job that never
        started (still pending, and no acknowledged report named a step) ends `unreachable`."""
        fx = Effects()
        still_timed = {job.id for job in self._timed_jobs()}
        ends: dict[str, list[JobState]] = {"timed_out": [], UNREACHABLE: []}
        for job in overdue:
            if job.id not in still_timed:
                continue
            step = steps.get(job.id, job.step)
            never_started = job.status == "pending" and step is None
            status = UNREACHABLE if never_started else "timed_out"
            self._settle_job(fx, job, status, step)
            ends[status].append(job)
        for status, action in (
            ("timed_out", "rollout.jobs_timed_out"),
            (UNREACHABLE, "rollout.jobs_unreachable"),
        ):
            if ended := ends[status]:
                names = [job.instance_id for job in ended[: rollout_text.REASON_NAMES]]
                self._event(fx, WORKFLOW_ACTOR, action, {"count": len(ended), "instances": names})
        self._find_earliest()
        return fx

    def settle(self, now: datetime) -> Effects:
        """Derive the rollout status from its jobs: failures or unreachable hosts over their
        limit pause (failures first), a settled batch waits."""
        fx = Effects()
        state = self.state
        if self.handing_out or self.finished or state.current_batch == 0:
            return fx
        if state.status != "paused" and (exceeded := self._exceeded()) is not None:
            self._pause(fx, WORKFLOW_ACTOR, self._limit_reason(exceeded), limit=exceeded)
            return fx
        if state.status != "running" or self.open_by_instance:
            return fx
        if state.current_batch >= self.total_batches:
            self._finish(fx, "completed", now)
        else:
            state.settled_at = now
            self._set_status(fx, "awaiting_advance", WORKFLOW_ACTOR)
        return fx

    def targets_grew(self, count: int) -> Effects:
        """Hosts joined late (includeLateJoiners): appended after the targets, so batches already
        released keep their hosts and the next ones take them."""
        fx = Effects()
        added = count - (self.target_count or 0)
        if added <= 0:
            return fx
        self.target_count = count
        self.state.late_joiners += added
        self._event(fx, WORKFLOW_ACTOR, "rollout.late_joiners", {"added": added, "targets": count})
        return fx

    def _gates_text(self) -> str | None:
        results = self.state.gate_results
        if not self.spec.gates or not results:
            return None
        passing = sum(r.ok for r in results)
        return f"gates {passing}/{len(results)} passing"

    def gates_due(self) -> bool:
        """The settled batch's gates are to be watched (through its bake) before the next."""
        state = self.state
        return (
            bool(self.spec.gates)
            and state.status == "awaiting_advance"
            and state.gates_passed_batch != state.current_batch
            and not self.handing_out
        )

    def gates_until(self, now: datetime) -> datetime:
        """The end of the bake the gates are watched through (now, for one look)."""
        settled = self.state.settled_at or now
        return max(now, settled + timedelta(seconds=self.spec.bake_seconds))

    def gates_judged(self, batch: int, results: list[GateResult], now: datetime) -> Effects:
        """The gates of `batch` passed (the next may go), or one failed: paused, the gate, its
        value and its threshold in the reason; with autoRevert, aborted and reverted instead.
        Results that come after the rollout moved on (advanced, paused, ended meanwhile) are
        only kept."""
        fx = Effects()
        state = self.state
        state.gate_results = results
        failed = [r for r in results if not r.ok]
        moved_on = state.current_batch != batch or state.status != "awaiting_advance"
        detail = {"batch": batch, "results": [r.detail for r in results]}
        self._event(
            fx, WORKFLOW_ACTOR, "rollout.gates_failed" if failed else "rollout.gates_passed", detail
        )
        if moved_on:
            return fx
        if failed and self.spec.auto_revert:
            reason = "health gate failed: " + "; ".join(r.detail for r in failed)
            self._event(fx, WORKFLOW_ACTOR, "rollout.abort", {"reason": reason})
            self._abort(fx, WORKFLOW_ACTOR, reason, now)
            self._revert_after(reason)
        elif failed:
            self._pause(fx, WORKFLOW_ACTOR, "; ".join(r.detail for r in failed))
        else:
            state.gates_passed_batch = batch
            fx.wake = True
        return fx

    # --- admin actions ------------------------------------------------------------------------

    def advance(self, actor: str, *, force: bool = False, now: datetime | None = None) -> Effects:
        """The next batch is due now; the workflow starts it (begin_batch). `force`: outside the
        maintenance window, that batch is released and handed out all the same."""
        self._require("advance", force=force, now=now)
        fx = Effects(start_batch=self.state.current_batch + 1)
        forced = force and self.state.window_closed
        if forced:
            self.state.forced_batch = self.state.current_batch + 1
        self._event(fx, actor, "rollout.advance", {"forced": True} if forced else None)
        return fx

    def pause(self, actor: str, reason: str | None, *, via: str | None = None) -> Effects:
        self._require("pause")
        fx = Effects()
        detail = {"reason": reason} | ({"via": via} if via else {})
        self._event(fx, actor, "rollout.pause", detail)
        self._pause(fx, actor, reason)
        fx.answer = f"paused: {self.state.paused_reason}"
        return fx

    def resume(self, actor: str, now: datetime, *, via: str | None = None) -> Effects:
        self._require("resume")
        fx = Effects()
        self._event(fx, actor, "rollout.resume", {"via": via} if via else None)
        state = self.state
        if state.paused_for_failures:
            state.accepted_failures = self._failure_count()
        if state.paused_for_unreachable:
            state.accepted_unreachable = self._unreachable_count()
        self._clear_pause()
        self._set_status(fx, "running", actor)
        self._hold_or_release(fx, actor, now)
        if self.state.status == "running":
            self._restart_pending(fx, now)
        fx.wake = True
        fx.answer = "resumed" + (f"; {self._hold_reason(now)}" if self._holding() else "")
        return fx

    def freeze(self, actor: str, reason: str, now: datetime) -> Effects:
        """A fleet freeze: no batch is released and no pending job handed out until it is lifted;
        running jobs finish. Pending jobs' deadlines stop, as in a pause. Again: the reason."""
        self._require("freeze")
        fx = Effects()
        self.state.frozen_reason = reason
        self._event(fx, actor, "rollout.frozen", {"reason": reason})
        self._hold_or_release(fx, actor, now)
        fx.answer = f"waiting: the fleet is frozen ({reason})"
        return fx

    def thaw(self, actor: str, now: datetime) -> Effects:
        """The freeze is lifted: back to where it was unless its window holds it, pending jobs'
        time starting again (a bake that ended meanwhile advances at once)."""
        self._require("thaw")
        fx = Effects()
        if self.state.frozen_reason is None:
            fx.answer = "not frozen"
            return fx
        self.state.frozen_reason = None
        self._event(fx, actor, "rollout.thawed")
        self._hold_or_release(fx, actor, now)
        fx.answer = f"thawed: {self.state.status}"
        return fx

    def window_changed(self, now: datetime) -> Effects:
        """The maintenance window opened or closed (or the rollout has none: nothing)."""
        fx = Effects()
        window, state = self.spec.window, self.state
        if window is None or self.finished:
            return fx
        closed = not is_open(window, now)
        if closed == state.window_closed:
            return fx
        state.window_closed = closed
        action = "rollout.window_closed" if closed else "rollout.window_opened"
        self._event(fx, WORKFLOW_ACTOR, action)
        self._hold_or_release(fx, WORKFLOW_ACTOR, now)
        return fx

    def _holding(self) -> bool:
        state = self.state
        if state.frozen_reason is not None:
            return True
        return state.window_closed and state.forced_batch != state.current_batch

    def _hold_reason(self, now: datetime) -> str:
        if self.state.frozen_reason is not None:
            return f"waiting: the fleet is frozen ({self.state.frozen_reason})"
        assert self.spec.window is not None
        return (
            f"waiting: outside its maintenance window ({describe_opening(self.spec.window, now)})"
        )

    def _hold_or_release(self, fx: Effects, actor: str, now: datetime) -> None:
        """`waiting` while a freeze or a closed window holds it: nothing released or handed
        out, pending jobs' deadlines stopped; back where it was when nothing does (batch 1 is
        released then, when it was held before it)."""
        state = self.state
        state.hold_text = self._hold_reason(now) if self._holding() else None
        if self._holding():
            if state.status in ("running", "awaiting_advance"):
                state.held_from = state.status
                self._set_status(fx, "waiting", actor)
                self._find_earliest()
            return
        if state.status != "waiting":
            return
        self._restart_pending(fx, now)
        self._set_status(fx, state.held_from or "running", actor)
        state.held_from = None
        if state.current_batch == 0 and self.target_count:
            fx.start_batch = 1
        fx.wake = True

    def _restart_pending(self, fx: Effects, now: datetime) -> None:
        """Pending jobs were withheld: their time starts again now."""
        for job in self.latest_jobs():
            if job.status == "pending":
                job.deadline = now + timedelta(seconds=self.spec.job_timeout_seconds)
                self._may_end_at(job.deadline)
                fx.jobs.add(job.id)

    def abort(
        self, actor: str, reason: str | None, now: datetime, *, then_revert: bool = True
    ) -> Effects:
        """`then_revert`: with autoRevert, the hosts it updated are reverted once it has ended;
        not when a revert aborts it, nor when its run is cancelled."""
        self._require("abort")
        fx = Effects()
        self._event(fx, actor, "rollout.abort", {"reason": reason})
        self._abort(fx, actor, reason, now)
        if self.spec.auto_revert and then_revert:
            self._revert_after(f"aborted by {actor}" + (f": {reason}" if reason else ""))
        fx.answer = "aborted"
        return fx

    def _revert_after(self, reason: str) -> None:
        """autoRevert: the workflow reverts the hosts it updated once it has ended; its details
        say why."""
        self.state.auto_revert_reason = reason
        self.state.note = f"{reason}; reverting the hosts it updated (autoRevert)"

    def cancel_requested(self, actor: str, reason: str, now: datetime) -> Effects:
        """The run is asked to cancel (Web UI, `temporal workflow cancel`): an abort that also
        cancels running jobs, as no report can reach a closed run."""
        fx = Effects()
        if not self.finished:
            fx = self.abort(actor, reason, now, then_revert=False)
            self.state.note = reason
        for job in self.latest_jobs():
            if job.status in OPEN_JOB_STATUSES:
                self._settle_job(fx, job, "cancelled", job.step)
        return fx

    # --- inside -------------------------------------------------------------------------------

    def _require(self, action: Action, *, force: bool = False, now: datetime | None = None) -> None:
        reason = self.refusal(action, force=force, now=now)
        if reason is not None:
            raise RefusedAction(reason)

    def _event(self, fx: Effects, actor: str, action: str, detail: dict | None = None) -> None:
        fx.events.append(AuditEvent(actor=actor, action=action, detail=detail or {}))

    def _set_status(
        self, fx: Effects, status: RolloutStatus, actor: str, reason: str | None = None
    ) -> None:
        previous = self.state.status
        if previous == status:
            return
        self.state.status = status
        detail = {"from": previous, "to": status} | ({"reason": reason} if reason else {})
        self._event(fx, actor, "rollout.status_changed", detail)

    def _finish(self, fx: Effects, status: RolloutStatus, now: datetime) -> None:
        self.state.finished_at = now
        self._clear_pause()
        self._set_status(fx, status, WORKFLOW_ACTOR)

    def _pause(
        self, fx: Effects, actor: str, reason: str | None, *, limit: Limit | None = None
    ) -> None:
        self.state.paused_reason = reason or f"paused by {actor}"
        self.state.paused_for_failures = limit == "failures"
        self.state.paused_for_unreachable = limit == "unreachable"
        self._set_status(fx, "paused", actor, self.state.paused_reason)
        fx.wake = True

    def _clear_pause(self) -> None:
        self.state.paused_reason = None
        self.state.paused_for_failures = False
        self.state.paused_for_unreachable = False

    def _paused_for_limit(self) -> bool:
        return self.state.paused_for_failures or self.state.paused_for_unreachable

    def _abort(self, fx: Effects, actor: str, reason: str | None, now: datetime) -> None:
        self._cancel_pending(fx)
        self._clear_pause()
        self.state.finished_at = now
        self._set_status(fx, "aborted", actor, reason)
        fx.wake = True

    def _new_job(
        self, instance_id: str, batch: int, attempt: int, now: datetime, new_id: Callable[[], str]
    ) -> JobState:
        return JobState(
            id=new_id(),
            instance_id=instance_id,
            batch=batch,
            attempt=attempt,
            deadline=now + timedelta(seconds=self.spec.job_timeout_seconds),
        )

    def _add_jobs(self, fx: Effects, new_jobs: list[JobState]) -> None:
        for job in new_jobs:
            self.jobs[job.id] = job
            self._counts[job.status] += 1
            if job.status not in TERMINAL_JOB_STATUSES:  # else settled while being written
                self.open_by_instance[job.instance_id] = job.id
                self._may_end_at(job.deadline)
        fx.wake = True

    def _archive_current_batch(self) -> None:
        """Fold the settled batch into counts: the carried state stays one batch big."""
        state = self.state
        for job in self.latest_jobs():
            state.past_counts[job.status] = state.past_counts.get(job.status, 0) + 1
            if job.status in FAILED_JOB_STATUSES:
                state.past_failures += 1
                if len(state.past_failure_notes) < rollout_text.REASON_NAMES:
                    state.past_failure_notes.append(rollout_text.failure_note(job))
            elif job.status == UNREACHABLE:
                state.past_unreachable += 1
                if len(state.past_unreachable_names) < rollout_text.REASON_NAMES:
                    state.past_unreachable_names.append(job.instance_id)
        self.jobs = {}
        self.open_by_instance = {}
        self._counts = Counter()
        self._earliest = None

    def _move(self, job: JobState, status: str) -> None:
        """A job's new status, counted when it is one of the batch's (not one being written)."""
        if self.jobs.get(job.id) is job and not job.superseded:
            self._counts[job.status] -= 1
            self._counts[status] += 1
        job.status = status  # type: ignore[assignment]

    def _settle_job(self, fx: Effects, job: JobState, status: str, step: str | None) -> None:
        self._move(job, status)
        job.step = step  # type: ignore[assignment]
        if self.open_by_instance.get(job.instance_id) == job.id:
            del self.open_by_instance[job.instance_id]
        fx.jobs.add(job.id)
        fx.wake = True

    def _cancel_pending(self, fx: Effects) -> None:
        for job in self.latest_jobs():
            if job.status == "pending":
                self._settle_job(fx, job, "cancelled", None)

    def _timed_jobs(self) -> list[JobState]:
        """Open jobs whose deadline runs: pending ones only while they are handed out."""
        withheld = self.state.status in ("paused", "waiting")
        return [
            self.jobs[job_id]
            for job_id in self.open_by_instance.values()
            if self.jobs[job_id].status == "in_progress" or not withheld
        ]

    def _may_end_at(self, deadline: datetime) -> None:
        if self._earliest is None or deadline < self._earliest:
            self._earliest = deadline

    def _find_earliest(self) -> list[JobState]:
        """The timed jobs, making `_earliest` exact."""
        timed = self._timed_jobs()
        self._earliest = min((job.deadline for job in timed), default=None)
        return timed

    def _auto_advance_due_at(self) -> datetime | None:
        state = self.state
        if not self.spec.auto_advance or state.status != "awaiting_advance":
            return None
        if state.settled_at is None or state.current_batch >= self.total_batches:
            return None
        return state.settled_at + timedelta(seconds=self.spec.bake_seconds)

    def _retryable(self) -> list[JobState]:
        return [job for job in self.latest_jobs() if job.status in RETRYABLE_JOB_STATUSES]

    def _current_failures(self) -> list[JobState]:
        return [job for job in self.latest_jobs() if job.status in FAILED_JOB_STATUSES]

    def _failure_count(self) -> int:
        return self.state.past_failures + sum(self._counts[s] for s in FAILED_JOB_STATUSES)

    def _current_unreachable(self) -> list[JobState]:
        return [job for job in self.latest_jobs() if job.status == UNREACHABLE]

    def _unreachable_count(self) -> int:
        return self.state.past_unreachable + self._counts[UNREACHABLE]

    def _exceeded(self) -> Limit | None:
        """The first limit the rollout is over, counting what a resume accepted as tolerated."""
        state, spec = self.state, self.spec
        if self._failure_count() > max(spec.max_failures, state.accepted_failures):
            return "failures"
        if self._unreachable_count() > max(spec.max_unreachable, state.accepted_unreachable):
            return "unreachable"
        return None

    def _limit_reason(self, limit: Limit) -> str:
        state, spec = self.state, self.spec
        if limit == "failures":
            return rollout_text.failure_reason(
                self._failure_count(),
                self._current_failures(),
                state.past_failure_notes,
                spec.max_failures,
                state.accepted_failures,
            )
        names = [job.instance_id for job in self._current_unreachable()]
        return rollout_text.unreachable_reason(
            self._unreachable_count(),
            names + state.past_unreachable_names,
            spec.max_unreachable,
            state.accepted_unreachable,
        )


def _by_id(jobs: list[JobState]) -> dict[str, JobState]:
    return {job.id: job for job in jobs}
