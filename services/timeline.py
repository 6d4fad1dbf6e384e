"""A job's per-step timeline, derived from its acknowledged reports alone (pure).

The reports are the one source of a job's steps (the workflow hears only of a job starting and
ending): each `in_progress` report opens a step and ends the one before it, which therefore
succeeded (or failed, when the step it opens is the rollback). The final report names the step
the job ended on and carries its output; a `rolled_back` or `rollback_failed` one also ends the
`rollback` step. A job settled without a final report (`timed_out`, `cancelled`) leaves its last
step open, with that outcome; when its host reported its end after that (the job's
`hostOutcome`), the step the host stopped at has the job's outcome and its rollback follows.

Everything here is computed on read, so a job's timeline never disagrees with its reports.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel

from contract.wire import CONTROL_PLANE_ENDS, JobStatus, Step
from store.job_reports import StoredReport
from workflows.rollout_models import FAILED_JOB_STATUSES, UNREACHABLE

StepOutcome = Literal["succeeded", "failed", "rolled_back", "timed_out", "cancelled", "running"]
# The job statuses a rollout's failure reasons explain (PROTOCOL §4: what `retry` releases again,
# and a rollback that failed). An unreachable job is no application failure (it counts against
# maxUnreachable), but it is why a rollout pauses and what a retry runs again.
EXPLAINED_JOB_STATUSES: frozenset[str] = FAILED_JOB_STATUSES | {UNREACHABLE}
_FAILED_OUTCOMES = frozenset({"failed", "timed_out", "cancelled"})
# The outcome of a last step left open, by the job's status: still running, or settled with no
# final report stored (timed out, cancelled, or an end the workflow heard of first).
_OPEN_STEP_OUTCOME: Mapping[str, StepOutcome] = {
    "pending": "running",
    "in_progress": "running",
    "succeeded": "succeeded",
    "rolled_back": "rolled_back",
    "timed_out": "timed_out",
    # Settled unreachable just before its agent's first report landed: its deadline had passed.
    "unreachable": "timed_out",
    "cancelled": "cancelled",
}


class TimelineStep(BaseModel):
    """One step as the agent reported it. `started_at` is null when the agent reported no start
    for it (only its end); `ended_at` is null while it runs, or when its job settled without a
    final report (timed out, cancelled). `message` is the head of the step's output as the
    agent sent it (at most 4 KiB)."""

    step: Step
    outcome: StepOutcome
    started_at: datetime | None
    ended_at: datetime | None = None
    message: str | None = None


class JobFailure(BaseModel):
    """Why one job of a batch failed: the step it failed at and that step's output."""

    job_id: str
    instance_id: str
    attempt: int
    status: JobStatus
    step: Step | None  # null when the job never reported a step (it never started)
    started_at: datetime | None
    ended_at: datetime | None
    message: str | None


@dataclass(frozen=True)
class JobFacts:
    """What a failure reason needs of a job (its status as the view shows it)."""

    id: str
    instance_id: str
    attempt: int
    status: JobStatus


def job_timeline(status: JobStatus, reports: Sequence[StoredReport]) -> list[TimelineStep]:
    """The job's steps in the order they ran; `reports` are the job's, in the order received."""
    steps: list[TimelineStep] = []
    final: StoredReport | None = None
    for report in reports:
        if report.status != "in_progress":
            final = report
        elif report.step is not None:
            # An agent rolls back only after a step failed (or it stopped mid-update).
            _close(
                steps, report.received_at, "failed" if report.step == "rollback" else "succeeded"
            )
            steps.append(
                TimelineStep(
                    step=report.step,
                    outcome="running",
                    started_at=report.received_at,
                    message=report.message,
                )
            )
    if final is None:
        if steps and steps[-1].outcome == "running":
            steps[-1].outcome = _OPEN_STEP_OUTCOME.get(status, "failed")
        return steps
    _end(steps, final, status)
    return steps


def _close(steps: list[TimelineStep], at: datetime, outcome: StepOutcome = "succeeded") -> None:
    """The step still running ended at `at`: a new one started, or the job ended."""
    if steps and steps[-1].outcome == "running":
        steps[-1].outcome, steps[-1].ended_at = outcome, at


def _end(steps: list[TimelineStep], final: StoredReport, status: JobStatus) -> None:
    at = final.received_at
    rolled = final.status in ("rolled_back", "rollback_failed")
    end = len(steps)
    if rolled:
        end = _index_of(steps, "rollback", end, at)
        steps[end].outcome = "rolled_back" if final.status == "rolled_back" else "failed"
        steps[end].ended_at = at
    for entry in steps[:end]:  # the final report says which step failed
        if entry.outcome == "failed":
            entry.outcome = "succeeded"
    _close(steps[:end], at)  # a step still running before the job's end ended with it
    named = final.step if final.step not in (None, "rollback") else _last_step(steps[:end])
    if named is None:
        return  # the job reported no step at all: nothing to attach its end to
    ended = steps[_index_of(steps, named, end, at)]
    ended.outcome = "succeeded" if final.status == "succeeded" else "failed"
    if status in CONTROL_PLANE_ENDS and final.status != "succeeded":
        # The host stopped there because the job was ended: the control plane's outcome.
        ended.outcome = _OPEN_STEP_OUTCOME[status]
    if not rolled:
        ended.ended_at = at  # a failed step that was rolled back ended when the rollback began
    if final.message is not None:
        ended.message = final.message


def _last_step(steps: Sequence[TimelineStep]) -> Step | None:
    return steps[-1].step if steps else None


def _index_of(steps: list[TimelineStep], step: Step, end: int, at: datetime) -> int:
    """Where the latest entry for `step` among steps[:end] is. When the agent never reported
    that step starting, an entry with no start is inserted at `end`, ending when what follows
    it began (or at `at`)."""
    for index in range(end - 1, -1, -1):
        if steps[index].step == step:
            return index
    following = steps[end].started_at if end < len(steps) else None
    steps.insert(end, TimelineStep(step=step, outcome="running", started_at=None))
    steps[end].ended_at = following or at
    return end


def failing_jobs(jobs: Iterable[JobFacts]) -> list[JobFacts]:
    """The failed, rolled-back, rollback-failed and timed-out jobs among `jobs` (one batch),
    counting each host by its newest attempt: a host whose retry succeeded has no failure."""
    newest: dict[str, JobFacts] = {}
    for job in jobs:
        seen = newest.get(job.instance_id)
        if seen is None or job.attempt > seen.attempt:
            newest[job.instance_id] = job
    return [job for job in newest.values() if job.status in EXPLAINED_JOB_STATUSES]


def job_failure(job: JobFacts, reports: Sequence[StoredReport]) -> JobFailure:
    """The step `job` failed at: its first step that did not succeed. That is the failed step,
    not the rollback after it (even when the rollback stalled)."""
    steps = job_timeline(job.status, reports)
    failed = next((s for s in steps if s.outcome in _FAILED_OUTCOMES), None)
    return JobFailure(
        job_id=job.id,
        instance_id=job.instance_id,
        attempt=job.attempt,
        status=job.status,
        step=failed.step if failed else None,
        started_at=failed.started_at if failed else None,
        ended_at=failed.ended_at if failed else None,
        message=failed.message if failed else None,
    )
