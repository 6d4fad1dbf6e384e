"""A job's timeline from its acknowledged reports: every way a job's story can end."""

from datetime import UTC, datetime, timedelta

import pytest

from contract.wire import JobStatus, ReportStatus, Step
from services.timeline import JobFacts, failing_jobs, job_failure, job_timeline
from store.job_reports import StoredReport

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def at(second: int) -> datetime:
    return T0 + timedelta(seconds=second)


def reports(*story: tuple[ReportStatus, Step | None, str | None]) -> list[StoredReport]:
    """One report a second, in order: (status, step, message)."""
    return [
        StoredReport(
            id=n,
            job_id="j1",
            instance_id="web-1",
            status=status,
            step=step,
            message=message,
            received_at=at(n),
        )
        for n, (status, step, message) in enumerate(story)
    ]


def started(*steps: Step) -> list[tuple[ReportStatus, Step | None, str | None]]:
    return [("in_progress", step, None) for step in steps]


def outline(status: JobStatus, story: list[StoredReport]) -> list[tuple[str, str, int | None]]:
    """(step, outcome, second it ended) of each step of the job's timeline."""
    steps = job_timeline(status, story)
    return [
        (s.step, s.outcome, None if s.ended_at is None else int((s.ended_at - T0).total_seconds()))
        for s in steps
    ]


def test_a_succeeded_job_shows_every_step_ending_when_the_next_began() -> None:
    story = reports(
        *started("preflight", "backup", "pull", "migrate", "smoke", "switch", "health"),
        ("succeeded", "health", "updated from 1.0.0 to 2.0.0"),
    )
    steps = job_timeline("succeeded", story)
    assert [(s.step, s.outcome) for s in steps] == [
        (step, "succeeded")
        for step in ("preflight", "backup", "pull", "migrate", "smoke", "switch", "health")
    ]
    assert [s.started_at for s in steps] == [at(n) for n in range(7)]
    assert [s.ended_at for s in steps] == [at(n) for n in range(1, 8)]
    assert steps[-1].message == "updated from 1.0.0 to 2.0.0"
    assert all(s.message is None for s in steps[:-1])


def test_a_rolled_back_job_shows_the_failed_step_with_its_output_then_the_rollback() -> None:
    output = "smoke failed: exit status 3\n  smoke broke on purpose\nrollback ok: exit status 0"
    story = reports(
        *started("preflight", "backup", "pull", "migrate", "smoke", "rollback"),
        ("rolled_back", "smoke", output),
    )
    assert outline("rolled_back", story) == [
        ("preflight", "succeeded", 1),
        ("backup", "succeeded", 2),
        ("pull", "succeeded", 3),
        ("migrate", "succeeded", 4),
        ("smoke", "failed", 5),  # ended when the rollback began
        ("rollback", "rolled_back", 6),
    ]
    steps = job_timeline("rolled_back", story)
    assert steps[4].message == output and steps[5].message is None


def test_a_failed_rollback_fails_both_the_step_and_the_rollback() -> None:
    story = reports(
        *started("preflight", "backup", "pull", "migrate", "smoke", "switch", "rollback"),
        ("rollback_failed", "switch", "switch failed: exit status 3"),
    )
    assert outline("rollback_failed", story)[-2:] == [
        ("switch", "failed", 6),
        ("rollback", "failed", 7),
    ]


def test_a_failure_without_rollback_ends_at_the_failed_step() -> None:
    story = reports(*started("preflight", "backup", "pull"), ("failed", "pull", "no rollback"))
    assert outline("failed", story) == [
        ("preflight", "succeeded", 1),
        ("backup", "succeeded", 2),
        ("pull", "failed", 3),
    ]


def test_steps_the_agent_never_reported_starting_still_show_their_end() -> None:
    """PROTOCOL asks for an `in_progress` report per step; an agent that sends only its final
    report still gets a timeline, with no start."""
    refused = reports(("failed", "preflight", "target not newer"))
    assert outline("failed", refused) == [("preflight", "failed", 0)]
    (preflight,) = job_timeline("failed", refused)
    assert (preflight.started_at, preflight.message) == (None, "target not newer")

    no_rollback_start = reports(*started("preflight", "smoke"), ("rolled_back", "smoke", "x"))
    assert outline("rolled_back", no_rollback_start) == [
        ("preflight", "succeeded", 1),
        ("smoke", "failed", 2),
        ("rollback", "rolled_back", 2),
    ]
    no_failed_start = reports(*started("preflight", "rollback"), ("rolled_back", "migrate", "x"))
    assert outline("rolled_back", no_failed_start) == [
        ("preflight", "succeeded", 1),
        ("migrate", "failed", 1),  # ended when the rollback began
        ("rollback", "rolled_back", 2),
    ]


def test_a_final_report_with_no_step_ends_the_step_last_started() -> None:
    story = reports(*started("preflight", "backup"), ("failed", None, "disk full"))
    assert outline("failed", story) == [("preflight", "succeeded", 1), ("backup", "failed", 2)]
    assert job_timeline("failed", reports(("failed", None, "disk full"))) == []


@pytest.mark.parametrize(
    ("status", "outcome"),
    [("in_progress", "running"), ("timed_out", "timed_out"), ("cancelled", "cancelled")],
)
def test_a_job_with_no_final_report_leaves_its_last_step_open(
    status: JobStatus, outcome: str
) -> None:
    story = reports(*started("preflight", "backup", "pull"))
    assert outline(status, story) == [
        ("preflight", "succeeded", 1),
        ("backup", "succeeded", 2),
        ("pull", outcome, None),
    ]


def test_a_job_rolling_back_shows_the_step_before_as_failed_at_once() -> None:
    story = reports(*started("preflight", "backup", "smoke", "rollback"))
    assert outline("in_progress", story)[-2:] == [
        ("smoke", "failed", 3),
        ("rollback", "running", None),
    ]


def test_a_job_nobody_started_has_an_empty_timeline() -> None:
    assert job_timeline("pending", []) == []
    assert job_timeline("timed_out", []) == []


def facts(instance_id: str, attempt: int, status: JobStatus) -> JobFacts:
    return JobFacts(
        id=f"{instance_id}-{attempt}", instance_id=instance_id, attempt=attempt, status=status
    )


def test_failing_jobs_counts_each_host_by_its_newest_attempt() -> None:
    batch = [
        facts("web-1", 1, "rolled_back"),
        facts("web-1", 2, "succeeded"),  # retried, now fine: no failure left
        facts("web-2", 1, "rolled_back"),
        facts("web-2", 2, "timed_out"),
        facts("web-3", 1, "rollback_failed"),
        facts("web-4", 1, "failed"),
        facts("web-5", 1, "in_progress"),
        facts("web-6", 1, "cancelled"),
        facts("web-7", 1, "unreachable"),  # not a failure, but why a rollout pauses
    ]
    assert [j.id for j in failing_jobs(batch)] == ["web-2-2", "web-3-1", "web-4-1", "web-7-1"]


def test_a_failure_names_the_failed_step_not_the_rollback() -> None:
    story = reports(
        *started("preflight", "backup", "smoke", "rollback"),
        ("rolled_back", "smoke", "smoke failed: exit status 3"),
    )
    failure = job_failure(facts("web-1", 1, "rolled_back"), story)
    assert (failure.step, failure.message) == ("smoke", "smoke failed: exit status 3")
    assert (failure.started_at, failure.ended_at) == (at(2), at(3))
    assert failure.instance_id == "web-1"


def test_a_timed_out_failure_names_the_step_it_stalled_in() -> None:
    stalled = job_failure(facts("web-1", 1, "timed_out"), reports(*started("preflight", "pull")))
    assert (stalled.step, stalled.started_at, stalled.ended_at) == ("pull", at(1), None)
    stalled_rollback = reports(*started("preflight", "smoke", "rollback"))
    assert job_failure(facts("web-1", 1, "timed_out"), stalled_rollback).step == "smoke"
    never_started = job_failure(facts("web-2", 1, "timed_out"), [])
    assert (never_started.step, never_started.message) == (None, None)


def test_a_host_outcome_after_the_control_plane_ended_the_job_shows_where_the_host_stopped() -> (
    None
):
    # Timed out at smoke; the host went on to switch, learnt of the end, rolled back.
    late = reports(
        *started("preflight", "backup", "pull", "migrate", "smoke"),
        ("rolled_back", "switch", "the control plane ended the job (timed_out)"),
    )
    assert outline("timed_out", late) == [
        ("preflight", "succeeded", 1),
        ("backup", "succeeded", 2),
        ("pull", "succeeded", 3),
        ("migrate", "succeeded", 4),
        ("smoke", "succeeded", 5),
        ("switch", "timed_out", 5),
        ("rollback", "rolled_back", 5),
    ]
    # Cancelled before it started: the host's only report is its end.
    cancelled = reports(("rolled_back", "backup", None))
    assert outline("cancelled", cancelled) == [
        ("backup", "cancelled", 0),
        ("rollback", "rolled_back", 0),
    ]
    # A host that finished before it heard: its steps as they ran.
    finished = reports(*started("preflight", "health"), ("succeeded", "health", None))
    assert outline("timed_out", finished) == [
        ("preflight", "succeeded", 1),
        ("health", "succeeded", 2),
    ]
