"""The rollout state machine on its own: no server, no clock, no randomness.

Plain tests walk every transition and every refusal; a hypothesis state machine drives the same
object through random sequences of reports, timeouts, releases and admin actions, checking what
must always hold: a host never has two open jobs, counts add up to the released targets, statuses
move only along the documented graph, and a finished rollout never changes.
"""

import ast
import itertools
import re
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import get_args

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.wire import (
    FINISHED_ROLLOUT_STATUSES,
    JOB_GRAPH,
    OPEN_JOB_STATUSES,
    JobStatus,
    ReportStatus,
    RolloutStatus,
    Step,
)
from domain.gates import GateResult
from domain.rollouts import RolloutSpec
from domain.windows import DAYS, MaintenanceWindow
from workflows import rollout_machine, rollout_text
from workflows.rollout_machine import (
    PLANNED_STATUSES,
    ROLLOUT_GRAPH,
    Action,
    Effects,
    RefusedAction,
    RolloutMachine,
    Wake,
)
from workflows.rollout_models import (
    FAILED_JOB_STATUSES,
    JobReportSignal,
    JobState,
    RolloutState,
)
from workflows.rollout_text import failure_reason, unreachable_reason

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
TIMEOUT = 100  # job_timeout_seconds
ACTIONS: tuple[Action, ...] = get_args(Action)


def make_spec(**options: object) -> RolloutSpec:
    fields: dict[str, object] = {
        "id": "r1",
        "manifest_id": "rel-1",
        "version": "1.4.0",
        "channel": "stable",
        "created_by": "test",
        "batch_size": 2,
        "job_timeout_seconds": TIMEOUT,
    }
    return RolloutSpec.model_validate(fields | options)


def id_factory() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"job-{next(counter)}"


class Run:
    """A machine with the chores the workflow does around it: slicing targets, ids."""

    def __init__(self, targets: list[str], **options: object) -> None:
        self.targets = targets
        self.machine = RolloutMachine(make_spec(**options), RolloutState(), None)
        self.new_id = id_factory()
        self.now = T0

    def load(self) -> Effects:
        fx = self.machine.targets_loaded(len(self.targets), self.now)
        if fx.start_batch is not None:
            self.release(fx.start_batch)
        return fx

    def begin(self, batch: int, actor: str = "workflow") -> Effects:
        size = self.machine.spec.batch_size
        ids = self.targets[(batch - 1) * size : batch * size]
        return self.machine.begin_batch(batch, ids, actor, self.now, self.new_id)

    def release(self, batch: int, actor: str = "workflow") -> Effects:
        self.begin(batch, actor)
        return self.machine.end_handout()

    def job(self, instance_id: str) -> JobState:
        (job,) = [j for j in self.machine.latest_jobs() if j.instance_id == instance_id]
        return job

    def report(
        self, instance_id: str, status: ReportStatus, step: Step | None = "health", **kw: str
    ) -> Effects:
        job = self.job(instance_id)
        signal = JobReportSignal(
            job_id=job.id, instance_id=instance_id, status=status, step=step, **kw
        )
        return self.machine.report(signal)

    def tick(self, seconds: float = 0) -> Effects:
        """What the run loop does on waking: time out overdue jobs, then settle."""
        self.now += timedelta(seconds=seconds)
        timed_out = self.machine.time_out(self.machine.overdue(self.now), {})
        settled = self.machine.settle(self.now)
        return Effects(
            events=timed_out.events + settled.events,
            jobs=timed_out.jobs | settled.jobs,
            wake=timed_out.wake or settled.wake,
        )

    def retry(self, actor: str = "ops") -> Effects:
        self.machine.begin_retry(actor, self.now, self.new_id)
        return self.machine.end_handout()


def started(targets: str = "abc", **options: object) -> Run:
    run = Run(list(targets), **options)
    run.load()
    return run


def status_moves(fx: Effects) -> list[tuple[str, str]]:
    return [
        (e.detail["from"], e.detail["to"])
        for e in fx.events
        if e.action == "rollout.status_changed"
    ]


def actions(fx: Effects) -> list[str]:
    return [e.action for e in fx.events]


# --- the graph ---------------------------------------------------------------------------------


def test_the_graphs_declare_every_status_and_mark_the_planned_ones() -> None:
    assert set(ROLLOUT_GRAPH) - PLANNED_STATUSES == set(get_args(RolloutStatus))
    assert set(JOB_GRAPH) - PLANNED_STATUSES == set(get_args(JobStatus))
    for graph in (ROLLOUT_GRAPH, JOB_GRAPH):
        assert all(target in graph for moves in graph.values() for target in moves)
    assert {s for s, moves in ROLLOUT_GRAPH.items() if not moves} == FINISHED_ROLLOUT_STATUSES
    assert {s for s, moves in JOB_GRAPH.items() if moves} == OPEN_JOB_STATUSES


def test_the_machine_is_plain_python() -> None:
    """No Temporal: it runs the same in a test, a replay and a live workflow."""
    for module in (rollout_machine, rollout_text):
        assert module.__file__ is not None
        nodes = list(ast.walk(ast.parse(Path(module.__file__).read_text())))
        imported = {a.name for n in nodes if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module or "" for n in nodes if isinstance(n, ast.ImportFrom)}
        assert imported and not [n for n in imported if n.split(".")[0] == "temporalio"]


# --- start -------------------------------------------------------------------------------------


def test_loaded_targets_start_the_rollout_and_release_batch_1() -> None:
    run = Run(list("abc"))
    fx = run.machine.targets_loaded(3, T0)
    assert (fx.start_batch, actions(fx)) == (1, ["rollout.started"])
    assert fx.events[0].detail == {"targets": 3, "batches": 2}
    begun = run.begin(1)
    assert [j.instance_id for j in begun.new_jobs] == ["a", "b"]
    assert run.machine.handing_out and run.machine.jobs == {}  # not handed out before written
    ended = run.machine.end_handout()
    assert ended.wake and ended.answer == "released batch 1/2"
    assert actions(ended) == ["rollout.batch_released"]
    assert set(run.machine.handed_out()) == {"a", "b"}
    handed = run.machine.handed_out()["a"]
    assert (handed.rollout_id, handed.release_id) == ("r1", "rel-1")
    assert handed.deadline == "2026-11-27T12:01:40Z"


def test_no_target_completes_the_rollout_at_once() -> None:
    run = Run([])
    fx = run.load()
    assert fx.start_batch is None and status_moves(fx) == [("running", "completed")]
    assert (
        run.machine.state.note == "no instance on channel stable is below 1.4.0: nothing to update"
    )
    assert run.machine.done and run.machine.state.finished_at == T0


def test_an_abort_while_targets_load_stands() -> None:
    run = Run(list("ab"))
    assert run.machine.refusal("abort") is None
    assert status_moves(run.machine.abort("ops", "wrong", T0)) == [("running", "aborted")]
    fx = run.load()
    assert fx.events == [] and fx.start_batch is None
    assert run.machine.state.note == "aborted before batch 1 was released"
    assert (run.machine.target_count, run.machine.state.current_batch) == (2, 0)


# --- jobs --------------------------------------------------------------------------------------


def test_reports_move_a_job_forward_and_keep_its_message() -> None:
    run = started()
    a = run.job("a")
    fx = run.report("a", "in_progress", "pull")
    assert (a.status, a.step, fx.jobs, fx.wake) == ("in_progress", "pull", {a.id}, True)
    assert run.report("a", "in_progress", "pull").jobs == set()  # a repeat changes nothing
    assert run.report("a", "in_progress", None).jobs == set()
    run.report("a", "in_progress", "migrate")
    assert a.step == "migrate"
    fx = run.report("a", "rolled_back", "smoke", message="smoke failed")
    assert (a.status, a.step, fx.messages) == ("rolled_back", "smoke", {a.id: "smoke failed"})
    assert "a" not in run.machine.open_by_instance


@pytest.mark.parametrize("status", ["succeeded", "failed", "rolled_back", "rollback_failed"])
def test_a_pending_job_may_end_with_any_report(status: ReportStatus) -> None:
    run = started(max_failures=5)
    run.report("a", status)
    assert run.job("a").status == status


def test_reports_for_settled_unknown_or_another_hosts_job_change_nothing() -> None:
    run = started()
    a = run.job("a")
    run.report("a", "succeeded")
    assert run.report("a", "failed").jobs == set() and a.status == "succeeded"
    stranger = JobReportSignal(job_id="nope", instance_id="a", status="failed")
    assert run.machine.report(stranger) == Effects()
    other = JobReportSignal(job_id=run.job("b").id, instance_id="a", status="failed")
    assert run.machine.report(other) == Effects() and run.job("b").status == "pending"


def test_overdue_jobs_time_out_at_their_reported_step() -> None:
    run = started("abc", max_failures=5, batch_size=3)
    run.report("a", "in_progress", "pull")
    assert run.machine.next_wake(T0) == Wake(
        T0 + timedelta(seconds=TIMEOUT), "job deadline in batch 1"
    )
    assert run.machine.overdue(T0 + timedelta(seconds=TIMEOUT - 1)) == []
    run.now += timedelta(seconds=TIMEOUT)
    overdue = run.machine.overdue(run.now)
    assert {j.instance_id for j in overdue} == {"a", "b", "c"}
    run.report("b", "succeeded")  # settled while the steps were looked up
    fx = run.machine.time_out(overdue, {run.job("a").id: "migrate"})
    assert (run.job("a").status, run.job("a").step) == ("timed_out", "migrate")
    assert (run.job("c").status, run.job("c").step) == ("unreachable", None)  # never started
    assert actions(fx) == ["rollout.jobs_timed_out", "rollout.jobs_unreachable"]
    assert fx.events[0].detail == {"count": 1, "instances": ["a"]}
    assert fx.events[1].detail == {"count": 1, "instances": ["c"]}
    assert run.job("b").status == "succeeded"
    assert run.machine.next_wake(T0) is None


def test_a_pending_job_whose_agent_reported_a_step_started_and_times_out_there() -> None:
    """The read model heard of a step the workflow did not (its in_progress signal is still on
    its way): the host was reachable, the job stalled."""
    run = started("ab", max_failures=5)
    run.now += timedelta(seconds=TIMEOUT)
    fx = run.machine.time_out(run.machine.overdue(run.now), {run.job("a").id: "preflight"})
    assert (run.job("a").status, run.job("a").step) == ("timed_out", "preflight")
    assert (run.job("b").status, run.job("b").step) == ("unreachable", None)
    assert fx.jobs == {run.job("a").id, run.job("b").id}


def test_while_paused_pending_jobs_are_withheld_and_their_time_restarts_on_resume() -> None:
    run = started()
    run.report("a", "in_progress", "pull")
    run.machine.pause("ops", None)
    assert run.machine.handed_out() == {}
    assert [j.instance_id for j in run.machine.overdue(T0 + timedelta(days=1))] == ["a"]
    run.now += timedelta(seconds=500)
    fx = run.machine.resume("ops", run.now)
    assert run.job("b").deadline == run.now + timedelta(seconds=TIMEOUT)
    assert fx.jobs == {run.job("b").id}
    assert run.job("a").deadline == T0 + timedelta(seconds=TIMEOUT)


# --- rollout transitions -------------------------------------------------------------------------


def test_a_settled_batch_awaits_advance_then_the_last_one_completes() -> None:
    run = started()
    run.report("a", "succeeded")
    assert run.tick().events == []  # b still open
    run.report("b", "succeeded")
    fx = run.tick(5)
    assert status_moves(fx) == [("running", "awaiting_advance")]
    assert run.machine.state.settled_at == T0 + timedelta(seconds=5)
    advanced = run.machine.advance("ops")
    assert (advanced.start_batch, actions(advanced)) == (2, ["rollout.advance"])
    begun = run.begin(2, "ops")
    assert status_moves(begun) == [("awaiting_advance", "running")]
    ended = run.machine.end_handout()
    assert ended.answer == "released batch 2/2"
    assert run.machine.counts() == {"succeeded": 2, "pending": 1}
    assert run.machine.jobs.keys() == {run.job("c").id}  # earlier batches folded into counts
    run.report("c", "succeeded")
    fx = run.tick(7)
    assert status_moves(fx) == [("running", "completed")]
    assert run.machine.done and run.machine.state.finished_at == T0 + timedelta(seconds=12)
    assert run.machine.details() == "batch 2/2 · 3 succeeded · completed"


def test_auto_advance_releases_the_next_batch_when_the_bake_is_over() -> None:
    run = started(auto_advance=True, bake_seconds=60)
    run.report("a", "succeeded")
    run.report("b", "succeeded")
    run.tick()
    assert run.machine.next_wake(T0) == Wake(
        T0 + timedelta(seconds=60), "bake after batch 1, then batch 2"
    )
    assert run.machine.due_batch(T0 + timedelta(seconds=59)) is None
    assert run.machine.due_batch(T0 + timedelta(seconds=60)) == 2
    run.machine.pause("ops", None)
    assert run.machine.due_batch(T0 + timedelta(seconds=60)) is None


def test_failures_over_the_limit_pause_and_a_resume_accepts_them() -> None:
    run = started("abcd", max_failures=0, batch_size=4)
    run.report("a", "failed", "migrate")
    fx = run.tick()
    reason = "1 job failed (max 0): a failed at migrate"
    assert status_moves(fx) == [("running", "paused")] and fx.wake
    assert run.machine.state.paused_reason == reason
    assert fx.events[0].detail["reason"] == reason
    assert run.machine.state.paused_for_failures
    resumed = run.machine.resume("ops", run.now)
    assert status_moves(resumed) == [("paused", "running")]
    assert run.machine.state.accepted_failures == 1
    run.report("b", "succeeded")
    assert run.tick().events == []
    run.report("c", "rolled_back", "smoke")
    run.tick()
    assert run.machine.state.paused_reason == (
        "2 jobs failed (max 0, 1 accepted): a failed at migrate; c rolled_back at smoke"
    )


# --- unreachable hosts ---------------------------------------------------------------------------


def unreachable_batch(**options: object) -> Run:
    """Batch 1 of a, b, c: c succeeds, a and b never start and their deadline passes."""
    run = started("abcdef", batch_size=3, **options)
    run.report("c", "succeeded")
    run.tick(TIMEOUT)
    return run


def test_unreachable_hosts_pause_under_their_own_limit_not_max_failures() -> None:
    run = unreachable_batch(max_failures=0, max_unreachable=1)
    state = run.machine.state
    reason = "2 hosts unreachable (max 1): a, b"
    assert (run.machine.status, state.paused_reason) == ("paused", reason)
    assert state.paused_for_unreachable and not state.paused_for_failures
    assert run.machine.counts() == {"succeeded": 1, "unreachable": 2}
    assert run.machine.details() == f"batch 1/2 · 1 succeeded · 2 unreachable · paused: {reason}"


def test_unreachable_hosts_within_their_limit_let_the_batch_settle() -> None:
    run = unreachable_batch(max_failures=0, max_unreachable=2)
    assert run.machine.status == "awaiting_advance"


def test_a_resume_accepts_the_unreachable_hosts_counted_so_far() -> None:
    run = unreachable_batch()
    run.machine.resume("ops", run.now)
    assert run.machine.state.accepted_unreachable == 2
    assert status_moves(run.tick()) == [("running", "awaiting_advance")]
    run.machine.advance("ops")
    run.release(2)
    run.report("d", "succeeded")
    run.report("e", "in_progress", "pull")  # e started: it times out, a failure
    fx = run.tick(TIMEOUT)
    assert run.machine.state.paused_reason == "1 job failed (max 0): e timed_out at pull"
    assert status_moves(fx) == [("running", "paused")]
    run.machine.resume("ops", run.now)
    # f is unreachable too, beyond the two accepted; the failure accepted does not count.
    assert status_moves(run.tick()) == [("running", "paused")]
    assert run.machine.state.paused_reason == "3 hosts unreachable (max 0, 2 accepted): f, a, b"


def test_failures_pause_first_and_unreachable_hosts_after_their_resume() -> None:
    run = started("abc", batch_size=3)
    run.report("a", "failed", "migrate")
    run.tick(TIMEOUT)  # b and c never started
    assert run.machine.state.paused_reason == "1 job failed (max 0): a failed at migrate"
    run.machine.resume("ops", run.now)
    assert status_moves(run.tick()) == [("running", "paused")]
    assert run.machine.state.paused_reason == "2 hosts unreachable (max 0): b, c"
    assert run.machine.state.accepted_failures == 1


def test_a_retry_runs_unreachable_jobs_again_and_ends_their_pause() -> None:
    run = unreachable_batch()
    ended = run.retry()
    assert status_moves(ended) == [("paused", "running")]
    assert ended.events[-1].detail == {"instances": ["a", "b"]}
    assert [(run.job(h).attempt, run.job(h).status) for h in "ab"] == [(2, "pending")] * 2
    assert not run.machine.state.paused_for_unreachable
    assert run.machine.counts() == {"succeeded": 1, "pending": 2}


def test_a_late_report_for_an_unreachable_job_changes_nothing() -> None:
    run = unreachable_batch()
    a = run.job("a")
    assert run.report("a", "in_progress", "preflight") == Effects()
    assert run.report("a", "succeeded") == Effects()
    assert (a.status, a.step) == ("unreachable", None)


def test_an_operator_pause_says_who_when_no_reason_is_given() -> None:
    run = started()
    fx = run.machine.pause("ops", None, via="signal")
    assert fx.answer == "paused: paused by ops" and not run.machine.state.paused_for_failures
    assert fx.events[0].detail == {"reason": None, "via": "signal"}
    assert status_moves(fx) == [("running", "paused")]


def test_a_batch_awaiting_advance_may_be_paused_and_resumed() -> None:
    run = started()
    run.report("a", "succeeded")
    run.report("b", "succeeded")
    run.tick()
    assert status_moves(run.machine.pause("ops", "freeze")) == [("awaiting_advance", "paused")]
    assert status_moves(run.machine.resume("ops", run.now)) == [("paused", "running")]
    assert status_moves(run.tick()) == [("running", "awaiting_advance")]
    assert status_moves(run.machine.abort("ops", None, run.now)) == [
        ("awaiting_advance", "aborted")
    ]
    assert run.machine.done


def test_a_retry_runs_failed_jobs_again_and_ends_a_failure_pause() -> None:
    run = started(max_failures=0)
    run.report("a", "rolled_back", "smoke")
    run.tick()
    old = run.job("a")
    begun = run.machine.begin_retry("ops", run.now, run.new_id)
    assert begun.events == []  # still paused while the rows are written
    assert run.machine.refusal("retry") == "jobs are being handed out; try again in a moment"
    ended = run.machine.end_handout()
    assert status_moves(ended) == [("paused", "running")]
    assert actions(ended)[-1] == "rollout.retry"
    assert ended.events[-1].detail == {"instances": ["a"]}
    assert ended.answer == "released 1 jobs again"
    new = run.job("a")
    assert old.superseded and (new.attempt, new.status) == (2, "pending")
    assert run.machine.open_by_instance["a"] == new.id


def test_a_retry_from_a_settled_batch_runs_it_again() -> None:
    run = started(max_failures=1)
    run.report("a", "failed")
    run.report("b", "succeeded")
    assert status_moves(run.tick()) == [("running", "awaiting_advance")]
    begun = run.machine.begin_retry("ops", run.now, run.new_id)
    assert status_moves(begun) == [("awaiting_advance", "running")]


def test_a_retry_that_leaves_too_many_failures_stays_paused() -> None:
    run = started("ab", max_failures=0)
    run.report("a", "failed")
    run.report("b", "rollback_failed")  # counts, but is not retried
    run.tick()
    ended = run.retry()
    assert status_moves(ended) == [] and run.machine.status == "paused"
    assert ended.events[-1].detail == {"instances": ["a"]}
    fx = run.machine.abort("ops", "give up", run.now)
    assert status_moves(fx) == [("paused", "aborted")]
    assert run.job("a").status == "cancelled"  # the retry's job had not started


def test_abort_cancels_pending_jobs_and_waits_for_running_ones() -> None:
    run = started()
    run.report("a", "in_progress", "pull")
    fx = run.machine.abort("ops", "bad build", T0)
    assert status_moves(fx) == [("running", "aborted")]
    assert fx.events[-1].detail["reason"] == "bad build"
    assert run.job("b").status == "cancelled" and fx.jobs == {run.job("b").id}
    assert not run.machine.done and run.machine.handed_out() == {}
    run.report("a", "failed", "migrate")
    assert run.machine.done and run.machine.status == "aborted"
    assert run.machine.counts() == {"failed": 1, "cancelled": 1}


def test_an_abort_while_a_batch_is_written_cancels_it_once_written() -> None:
    run = started()
    run.report("a", "succeeded")
    run.report("b", "succeeded")
    run.tick()
    run.machine.advance("ops")
    run.begin(2, "ops")
    assert run.machine.settle(run.now) == Effects()  # nothing settles mid-release
    run.machine.abort("ops", None, run.now)
    ended = run.machine.end_handout()
    assert run.job("c").status == "cancelled" and run.machine.done
    assert run.job("c").id in ended.jobs


def test_reports_on_a_batch_still_being_written_count_once_the_workflow_takes_them() -> None:
    """Polls hand a job out once its row is written, before the workflow hears the write end:
    its agent's reports may then arrive first."""
    run = Run(list("ab"), batch_size=2)
    run.machine.targets_loaded(2, run.now)
    a, b = run.begin(1).new_jobs
    machine = run.machine

    def signal(job: JobState, status: ReportStatus) -> JobReportSignal:
        return JobReportSignal(job_id=job.id, instance_id=job.instance_id, status=status)

    other = JobReportSignal(job_id="job-other", instance_id="a", status="succeeded")
    assert machine.report(other) == Effects()  # not a job of this hand-out
    assert machine.report(signal(a, "succeeded")).jobs == {a.id}
    assert machine.report(signal(b, "in_progress")).jobs == {b.id}
    machine.end_handout()
    assert (run.job("a").status, run.job("b").status) == ("succeeded", "in_progress")
    assert set(machine.handed_out()) == {"b"}  # the settled job is not open again
    run.report("b", "succeeded")
    assert status_moves(run.tick()) == [("running", "completed")]


def test_a_batch_reserved_while_its_ids_are_read_runs_and_a_pause_meanwhile_stands() -> None:
    run = started()
    run.report("a", "succeeded")
    run.report("b", "succeeded")
    run.tick()
    run.machine.advance("ops")
    reserved = run.machine.reserve_batch(2, "ops")
    assert status_moves(reserved) == [("awaiting_advance", "running")]
    assert run.machine.refusal("advance") is not None  # no second release meanwhile
    run.machine.pause("ops", "freeze")
    run.begin(2, "ops")  # the ids are read
    run.machine.end_handout()
    assert (run.machine.status, run.machine.state.current_batch) == ("paused", 2)
    assert run.machine.handed_out() == {}  # withheld while paused


def test_a_reserved_batch_abandoned_releases_nothing() -> None:
    run = started()
    run.report("a", "succeeded")
    run.report("b", "succeeded")
    run.tick()
    run.machine.advance("ops")
    run.machine.reserve_batch(2, "ops")
    run.machine.abandon_batch()
    assert not run.machine.handing_out and run.machine.state.current_batch == 1


def test_a_cancel_request_aborts_and_cancels_running_jobs_too() -> None:
    run = started()
    run.report("a", "in_progress", "pull")
    fx = run.machine.cancel_requested("temporal", "cancellation requested", T0)
    assert actions(fx) == ["rollout.abort", "rollout.status_changed"]
    assert (run.job("a").status, run.job("a").step) == ("cancelled", "pull")
    assert run.machine.state.note == "cancellation requested" and run.machine.done


def test_a_cancel_request_after_the_end_changes_nothing() -> None:
    run = started()
    run.report("a", "in_progress", "pull")
    run.machine.abort("ops", None, T0)  # a runs on
    fx = run.machine.cancel_requested("temporal", "cancel", T0)
    assert actions(fx) == [] and run.job("a").status == "cancelled"
    assert run.machine.state.note is None


# --- refusals ----------------------------------------------------------------------------------


def refused(run: Run, action: Action) -> str:
    """The refusal, after checking each action's method raises it too."""
    reason = run.machine.refusal(action)
    assert reason is not None
    calls: dict[Action, Callable[[], object]] = {
        "advance": lambda: run.machine.advance("ops"),
        "pause": lambda: run.machine.pause("ops", None),
        "resume": lambda: run.machine.resume("ops", run.now),
        "retry": lambda: run.machine.begin_retry("ops", run.now, run.new_id),
        "abort": lambda: run.machine.abort("ops", None, run.now),
        "freeze": lambda: run.machine.freeze("ops", "change freeze", run.now),
        "thaw": lambda: run.machine.thaw("ops", run.now),
    }
    with pytest.raises(RefusedAction, match="^" + re.escape(reason) + "$"):
        calls[action]()
    return reason


@pytest.mark.parametrize("action", ACTIONS)
def test_a_finished_rollout_refuses_every_action(action: Action) -> None:
    run = Run([])
    run.load()
    assert refused(run, action) == (
        f"rollout is completed; {action} does not apply to a finished rollout"
    )


@pytest.mark.parametrize("action", ["advance", "pause", "resume", "retry"])
def test_before_batch_1_only_abort_applies(action: Action) -> None:
    run = Run(list("ab"))
    assert refused(run, action) == (
        "the rollout is starting (batch 1 is not handed out yet); try again in a moment"
    )
    assert run.machine.refusal("abort") is None


@pytest.mark.parametrize("action", ["advance", "retry"])
def test_while_a_batch_is_written_advance_and_retry_wait(action: Action) -> None:
    run = started(max_failures=5)
    run.report("a", "failed")
    run.report("b", "succeeded")
    run.tick()
    run.machine.advance("ops")
    run.begin(2)
    assert refused(run, action) == "jobs are being handed out; try again in a moment"
    assert run.machine.refusal("pause") is None and run.machine.refusal("abort") is None


def test_advance_refusals_say_what_to_do() -> None:
    run = started()
    run.report("a", "succeeded")
    assert refused(run, "advance") == "batch 1/2 is still running (1 jobs not settled)"
    run.machine.pause("ops", "freeze")
    assert refused(run, "advance") == "rollout is paused (freeze); resume it first"
    assert refused(run, "pause") == "rollout is already paused (freeze)"


def test_resume_and_retry_refusals() -> None:
    run = started()
    assert refused(run, "resume") == "rollout is not paused (it is running)"
    assert refused(run, "retry") == (
        "batch 1 has no failed, rolled-back, timed-out or unreachable job to retry"
    )
    run.report("a", "rollback_failed")
    assert refused(run, "retry").startswith("batch 1 has no failed")


def test_text() -> None:
    job = JobState(id="j", instance_id="web-1", batch=1, attempt=1, deadline=T0, status="failed")
    notes = [f"web-{n} failed" for n in range(2, 12)]
    assert failure_reason(12, [job], notes, 3, 3) == (
        "12 jobs failed (max 3): web-1 failed; " + "; ".join(notes[:9]) + "; and 2 more"
    )
    names = [f"web-{n}" for n in range(1, 11)]
    assert unreachable_reason(12, names, 0, 2) == (
        "12 hosts unreachable (max 0, 2 accepted): " + ", ".join(names) + ", and 2 more"
    )
    assert unreachable_reason(1, ["web-1"], 0, 0) == "1 host unreachable (max 0): web-1"


# --- random sequences --------------------------------------------------------------------------


# One operation of a random sequence: what reaches the workflow, in any order. A release is
# begun (by loading, advance, auto-advance or retry), then ended once its rows are written
# ("written"), with anything in between.
OPERATIONS = st.one_of(
    st.tuples(
        st.just("report"),
        st.integers(0, 50),  # which job, of all made so far
        st.sampled_from(get_args(ReportStatus)),
        st.sampled_from(get_args(Step)),
    ),
    st.tuples(st.just("time"), st.sampled_from([1, 30, TIMEOUT, 3 * TIMEOUT])),
    st.tuples(st.just("written")),
    st.tuples(st.just("admin"), st.sampled_from(ACTIONS)),
    st.tuples(st.just("cancel")),
)


def kinds(counts: dict[str, int]) -> tuple[int, int]:
    """(failed, unreachable) jobs in `counts`: what maxFailures and maxUnreachable count."""
    failed = sum(n for status, n in counts.items() if status in FAILED_JOB_STATUSES)
    return failed, counts.get("unreachable", 0)


class Checked:
    """Drives one machine like the workflow does, checking every transition and, after each
    operation, what must always hold."""

    def __init__(
        self, hosts: int, batch_size: int, limits: tuple[int, int], auto_advance: bool
    ) -> None:
        max_failures, max_unreachable = limits
        options = {
            "batch_size": batch_size,
            "max_failures": max_failures,
            "max_unreachable": max_unreachable,
        }
        self.run = Run([f"host-{n}" for n in range(hosts)], auto_advance=auto_advance, **options)
        self.all_jobs: dict[str, JobState] = {}
        self.release_jobs: list[JobState] = []  # of the release begun last

    def load(self, abort_while_loading: bool) -> None:
        if abort_while_loading:
            self.step(lambda: self.run.machine.abort("ops", None, T0))
        loaded = self.run.machine.targets_loaded
        fx = self.step(lambda: loaded(len(self.run.targets), T0), says_why=True)
        if fx.start_batch is not None:
            self.step(lambda: self.run.begin(1))
        self.holds()

    def step(self, change: Callable[[], Effects], *, says_why: bool = False) -> Effects:
        """Run one change, checking the transition. Two things may follow the end: the note
        explaining an abort that came while the targets loaded (`says_why`), and a release
        whose rows were being written when the rollout ended: its batch counts as released,
        and its jobs that no report reached end cancelled."""
        machine = self.run.machine
        before_status = machine.status
        before_jobs = {job.id: job.status for job in self.all_jobs.values()}
        finished_before = machine.state.model_dump() if machine.finished else None
        settled_before = finished_before if machine.done and not machine.handing_out else None
        handing_out = machine.handing_out
        fx = change()
        ended_release = [] if machine.handing_out or not handing_out else self.release_jobs
        moves = status_moves(fx)
        path = [before_status] + [to for _, to in moves]
        assert [frm for frm, _ in moves] == path[:-1] and path[-1] == machine.status
        for frm, to in moves:
            assert to in ROLLOUT_GRAPH[frm], f"{frm} -> {to} is not in the graph"
        if moves and moves[-1][1] == "paused":
            # A pause for a limit names the count of that kind alone.
            failed, unreachable = kinds(machine.counts())
            reason = machine.state.paused_reason or ""
            if machine.state.paused_for_failures:
                assert reason.startswith(f"{failed} job"), reason
            if machine.state.paused_for_unreachable:
                assert reason.startswith(f"{unreachable} host"), reason
        for job in fx.new_jobs:
            self.all_jobs[job.id] = job
        if fx.new_jobs:
            self.release_jobs = fx.new_jobs
        for job_id, old in before_jobs.items():
            new = self.all_jobs[job_id].status
            assert new == old or new in JOB_GRAPH[old], f"job {old} -> {new}"
        assert fx.jobs <= self.all_jobs.keys()
        if finished_before is not None:
            after = machine.state.model_dump()
            kept = ["status", "finished_at", "paused_reason"]
            kept += [] if says_why else ["note"]
            kept += [] if ended_release else ["current_batch"]
            for key in kept:
                assert after[key] == finished_before[key], f"{key} changed after the end"
            # Reports may reach jobs being written: those run on, the rest are cancelled.
            assert all(job.status != "pending" for job in ended_release)
        if settled_before is not None and not says_why:
            assert fx.events == [] and fx.jobs == set()
            assert machine.state.model_dump() == settled_before
        return fx

    def loop(self) -> None:
        """The run loop's turn after anything happened."""
        run = self.run
        overdue = run.machine.overdue(run.now)
        self.step(lambda: run.machine.time_out(overdue, {}))
        self.step(lambda: run.machine.settle(run.now))
        if (batch := run.machine.due_batch(run.now)) is not None:
            self.step(lambda: run.begin(batch))

    def apply(self, operation: tuple) -> None:
        run, machine = self.run, self.run.machine
        match operation:
            case ("report", pick, status, step):
                if not self.all_jobs:
                    return
                job = list(self.all_jobs.values())[pick % len(self.all_jobs)]
                signal = JobReportSignal(
                    job_id=job.id, instance_id=job.instance_id, status=status, step=step
                )
                self.step(lambda: machine.report(signal))
            case ("time", seconds):
                run.now += timedelta(seconds=seconds)
            case ("written",):
                if not machine.handing_out:
                    return
                self.step(machine.end_handout)
            case ("admin", action) if machine.refusal(action) is not None:
                refused(run, action)
                return
            case ("admin", "advance"):
                batch = self.step(lambda: machine.advance("ops")).start_batch
                assert batch == machine.state.current_batch + 1
                self.step(lambda: run.begin(batch, "ops"))
            case ("admin", "retry"):
                self.step(lambda: machine.begin_retry("ops", run.now, run.new_id))
            case ("admin", "pause"):
                self.step(lambda: machine.pause("ops", None))
            case ("admin", "resume"):
                self.step(lambda: machine.resume("ops", run.now))
            case ("admin", "abort"):
                self.step(lambda: machine.abort("ops", None, run.now))
            case ("admin", "freeze"):
                self.step(lambda: machine.freeze("ops", "freeze", run.now))
            case ("admin", "thaw"):
                thawed = self.step(lambda: machine.thaw("ops", run.now))
                if thawed.start_batch is not None:  # frozen before batch 1
                    self.step(lambda: run.begin(1))
            case ("cancel",):
                self.step(lambda: machine.cancel_requested("temporal", "cancel", run.now))
        self.loop()
        self.holds()

    def holds(self) -> None:
        machine = self.run.machine
        # A host never has two open jobs, and the index of open jobs is exact.
        open_jobs = [j for j in machine.jobs.values() if j.status in OPEN_JOB_STATUSES]
        assert len({j.instance_id for j in open_jobs}) == len(open_jobs)
        assert machine.open_by_instance == {j.instance_id: j.id for j in open_jobs}
        # Counts add up to the targets released, all of them once completed.
        released = min(machine.state.current_batch * machine.spec.batch_size, len(self.run.targets))
        assert sum(machine.counts().values()) == released
        counts = machine.counts()
        # The counts kept as jobs move are those of a recount.
        recount = Counter(machine.state.past_counts)
        recount.update(job.status for job in machine.latest_jobs())
        assert counts == {status: n for status, n in recount.items() if n}
        # The next wake is never after a deadline that runs.
        deadlines = [job.deadline for job in open_jobs if job.status == "in_progress"]
        withheld = machine.status in ("paused", "waiting")
        deadlines += [] if withheld else [j.deadline for j in open_jobs]
        wake = machine.next_wake(T0)
        assert not deadlines or (wake is not None and wake.at <= min(deadlines))
        if machine.status == "completed":
            assert released == len(self.run.targets)
            assert set(counts) <= {"succeeded", "unreachable"} | FAILED_JOB_STATUSES
        # Each limit counts its own kind: a rollout over either one does not run on.
        state, spec = machine.state, machine.spec
        failed, unreachable = kinds(counts)
        # A freeze holds it waiting, and nothing else does here (no window).
        if machine.status not in ("paused", "completed", "aborted"):
            assert (machine.status == "waiting") == (state.frozen_reason is not None)
        if machine.status in ("running", "awaiting_advance") and not machine.handing_out:
            assert failed <= max(spec.max_failures, state.accepted_failures)
            assert unreachable <= max(spec.max_unreachable, state.accepted_unreachable)
        assert not (state.paused_for_failures and state.paused_for_unreachable)
        # Planned statuses are declared, not reached.
        assert machine.status not in PLANNED_STATUSES
        assert not {j.status for j in machine.jobs.values()} & PLANNED_STATUSES
        # Jobs are handed out only while the rollout runs.
        handed = machine.handed_out()
        if machine.status == "paused" or machine.finished:
            assert handed == {}
        else:
            assert handed.keys() == machine.open_by_instance.keys()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    hosts=st.integers(0, 7),
    batch_size=st.integers(1, 3),
    limits=st.tuples(st.integers(0, 2), st.integers(0, 2)),  # maxFailures, maxUnreachable
    auto_advance=st.booleans(),
    abort_while_loading=st.booleans(),
    operations=st.lists(OPERATIONS, max_size=30),
)
def test_random_sequences_keep_the_invariants(
    hosts: int,
    batch_size: int,
    limits: tuple[int, int],
    auto_advance: bool,
    abort_while_loading: bool,
    operations: list[tuple],
) -> None:
    checked = Checked(hosts, batch_size, limits, auto_advance)
    checked.load(abort_while_loading)
    for operation in operations:
        checked.apply(operation)


def test_counts_of_a_run_are_the_jobs_latest_attempts() -> None:
    run = started("ab", max_failures=5)
    run.report("a", "failed")
    run.retry()
    run.report("a", "succeeded")
    assert Counter(run.machine.counts()) == Counter({"succeeded": 1, "pending": 1})


# --- a fleet freeze ----------------------------------------------------------------------------


def test_a_freeze_holds_pending_jobs_and_releases_nothing_until_it_is_lifted() -> None:
    run = started("abcd", job_timeout_seconds=60, auto_advance=True, max_failures=1)
    run.report("a", "in_progress", "backup")
    fx = run.machine.freeze("ops", "change freeze", run.now)
    assert status_moves(fx) == [("running", "waiting")]
    assert run.machine.refusal("advance") == (
        "the fleet is frozen (change freeze): nothing is released until it is lifted"
    )
    assert "waiting: the fleet is frozen (change freeze)" in run.machine.details()
    assert run.machine.handed_out().keys() == {"a", "b"}  # the read model withholds b (waiting)
    run.tick(3600)  # b's deadline does not run while it is withheld; a's does
    assert (run.job("a").status, run.job("b").status) == ("timed_out", "pending")
    run.report("b", "succeeded")  # a report from a host that had it before still counts
    run.tick()
    assert run.machine.status == "waiting"  # settled, but not released on
    assert run.machine.due_batch(run.now + timedelta(days=1)) is None

    thawed = run.machine.thaw("ops", run.now)
    assert status_moves(thawed) == [("waiting", "running")]
    run.tick()
    assert run.machine.status == "awaiting_advance"
    assert run.machine.due_batch(run.now) == 2  # auto-advance goes on


def test_a_frozen_pending_job_gets_its_whole_time_once_thawed() -> None:
    run = started("ab", job_timeout_seconds=60)
    run.machine.freeze("ops", "incident", run.now)
    run.tick(600)
    run.machine.thaw("ops", run.now)
    assert run.job("a").deadline == run.now + timedelta(seconds=60)
    run.tick(59)
    assert run.job("a").status == "pending"


def test_a_pause_and_a_freeze_each_hold_until_their_own_end() -> None:
    run = started("ab")
    run.machine.freeze("ops", "freeze", run.now)
    run.machine.pause("ops", "looking")
    assert run.machine.status == "paused"
    fx = run.machine.resume("ops", run.now)
    assert run.machine.status == "waiting" and "the fleet is frozen (freeze)" in fx.answer
    run.machine.thaw("ops", run.now)
    assert run.machine.status == "running"
    assert run.machine.thaw("ops", run.now).answer == "not frozen"  # again: nothing


def test_frozen_before_batch_1_releases_it_when_thawed() -> None:
    run = Run(list("ab"))
    run.machine.freeze("ops", "freeze", run.now)
    assert run.load().start_batch is None
    assert run.machine.thaw("ops", run.now).start_batch == 1


def test_a_window_across_the_spring_change_opens_and_closes_at_its_local_hours() -> None:
    berlin = MaintenanceWindow.model_validate(
        {
            "timezone": "Europe/Berlin",
            "ranges": [{"days": ["sun"], "start": "01:00", "end": "04:00"}],
        }
    )
    run = Run(list("ab"), window=berlin)
    run.now = datetime(2026, 3, 28, 23, 30, tzinfo=UTC)  # Sunday 00:30 CET: closed
    held = run.machine.window_changed(run.now)
    assert [e.action for e in held.events] == ["rollout.window_closed", "rollout.status_changed"]
    assert run.load().start_batch is None and run.machine.status == "waiting"
    assert (
        "opens Sun 2026-03-29 01:00 Europe/Berlin (2026-03-29 00:00 UTC)" in run.machine.details()
    )
    wake = run.machine.next_wake(run.now)
    assert wake == Wake(datetime(2026, 3, 29, 0, 0, tzinfo=UTC), "the maintenance window opens")

    opened = run.machine.window_changed(wake.at)
    assert opened.start_batch == 1 and run.machine.status == "running"
    # 04:00 local is 02:00 UTC now that Berlin is on summer time: three hours, not four.
    assert run.machine.next_wake(wake.at) == Wake(
        datetime(2026, 3, 29, 2, 0, tzinfo=UTC), "the maintenance window closes"
    )


def test_a_resume_inside_a_closed_window_waits_for_it() -> None:
    nightly = MaintenanceWindow.model_validate(
        {"ranges": [{"days": list(DAYS), "start": "22:00", "end": "04:00"}]}
    )
    run = Run(list("ab"), window=nightly)
    run.now = datetime(2026, 12, 7, 23, 0, tzinfo=UTC)  # open
    run.machine.window_changed(run.now)
    run.load()
    run.machine.pause("ops", "looking")
    run.now = datetime(2026, 12, 8, 5, 0, tzinfo=UTC)  # closed while paused
    run.machine.window_changed(run.now)
    assert run.machine.status == "paused"
    resumed = run.machine.resume("ops", run.now)
    assert run.machine.status == "waiting"
    assert "outside its maintenance window (opens Tue 2026-12-08 22:00 UTC)" in resumed.answer
    run.machine.window_changed(datetime(2026, 12, 8, 22, 0, tzinfo=UTC))
    assert run.machine.status == "running"


# --- autoRevert: what ends the rollout asks for a revert of the hosts it updated, or not ----


GATE = {"name": "errors", "kind": "prometheus", "query": "rate(errors[1m])", "below": 0.01}


def _settled_batch_one(**options: object) -> Run:
    run = started("abcd", gates=[GATE], **options)
    run.report("a", "succeeded")
    run.report("b", "succeeded")
    run.tick()
    assert run.machine.status == "awaiting_advance" and run.machine.gates_due()
    return run


def _failing_gate() -> list[GateResult]:
    return [GateResult(name="errors", ok=False, observed="0.042", detail="gate errors: 0.042")]


def test_a_failing_gate_aborts_and_asks_for_the_revert_with_auto_revert() -> None:
    run = _settled_batch_one(auto_revert=True)
    fx = run.machine.gates_judged(1, _failing_gate(), run.now)
    assert run.machine.status == "aborted" and run.machine.done
    assert run.machine.state.auto_revert_reason == "health gate failed: gate errors: 0.042"
    assert ("awaiting_advance", "aborted") in status_moves(fx)


def test_a_failing_gate_only_pauses_without_auto_revert() -> None:
    run = _settled_batch_one()
    run.machine.gates_judged(1, _failing_gate(), run.now)
    assert run.machine.status == "paused"
    assert run.machine.state.auto_revert_reason is None


@pytest.mark.parametrize(
    ("auto_revert", "then_revert", "asked"),
    [(True, True, "aborted by ops: bad build"), (True, False, None), (False, True, None)],
    ids=["an operator's abort", "a revert's own abort", "no autoRevert"],
)
def test_an_abort_asks_for_the_revert_only_with_auto_revert_and_not_a_revert_s_own(
    auto_revert: bool, then_revert: bool, asked: str | None
) -> None:
    run = started("ab", auto_revert=auto_revert)
    run.machine.abort("ops", "bad build", run.now, then_revert=then_revert)
    assert run.machine.state.auto_revert_reason == asked


def test_a_cancelled_run_asks_for_no_revert() -> None:
    run = started("ab", auto_revert=True)
    run.machine.cancel_requested("temporal", "cancellation requested in Temporal", run.now)
    assert run.machine.status == "aborted"
    assert run.machine.state.auto_revert_reason is None
