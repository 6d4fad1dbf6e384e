"""Typed inputs and outputs of RolloutWorkflow: its run, signals, updates, queries, activities.

Everything crossing Temporal goes through `pydantic_data_converter`, so these are the wire
format of workflow histories: add fields with defaults only, or recorded histories break.
"""

from collections.abc import Iterable
from datetime import datetime
from typing import Any, get_args

from pydantic import BaseModel, Field

from contract.wire import JobStatus, ReportStatus, RolloutStatus, Step
from domain.gates import Gate, GateResult
from domain.jobs import JobWrite
from domain.rollouts import RolloutProgress, RolloutSnapshot, RolloutSpec

FAILED_JOB_STATUSES: frozenset[str] = frozenset(
    {"failed", "rolled_back", "rollback_failed", "timed_out"}
)
# Its host never started it by its deadline: counted against maxUnreachable, not maxFailures.
UNREACHABLE = "unreachable"
RETRYABLE_JOB_STATUSES: frozenset[str] = frozenset(
    {"failed", "rolled_back", "timed_out", UNREACHABLE}
)


# --- state -----------------------------------------------------------------------------------


class JobState(BaseModel):
    id: str
    instance_id: str
    batch: int
    attempt: int
    status: JobStatus = "pending"
    step: Step | None = None
    deadline: datetime
    superseded: bool = False  # a retry released a newer job for this instance


class RolloutState(BaseModel):
    """All a run knows; carried whole into the next run on continue-as-new."""

    status: RolloutStatus = "running"
    paused_reason: str | None = None
    paused_for_failures: bool = False
    # The targets are in PostgreSQL, read a batch at a time: only their number is carried.
    target_count: int | None = None  # None until they are known
    current_batch: int = 0
    # The current batch, every attempt: set only for continue-as-new, read by the next run.
    carried_jobs: "CarriedJobs" = Field(default_factory=lambda: CarriedJobs())
    past_counts: dict[str, int] = Field(default_factory=dict)  # earlier batches, latest attempts
    past_failures: int = 0  # failed jobs of earlier batches (accepted, or the rollout had paused)
    past_failure_notes: list[str] = Field(default_factory=list)  # the first few, "web-7 failed"
    accepted_failures: int = 0
    # Unreachable hosts, counted against maxUnreachable like failures against maxFailures.
    paused_for_unreachable: bool = False
    past_unreachable: int = 0
    past_unreachable_names: list[str] = Field(default_factory=list)  # the first few
    accepted_unreachable: int = 0
    settled_at: datetime | None = None
    finished_at: datetime | None = None
    note: str | None = None
    # What holds the rollout `waiting`: a fleet freeze (services/freezes.py), its maintenance
    # window closed (unless the current batch was forced out), and the status it was held in.
    frozen_reason: str | None = None
    window_closed: bool = False
    forced_batch: int | None = None  # released outside the window by a forced advance
    held_from: RolloutStatus | None = None
    hold_text: str | None = None  # why it waits, in words: "waiting: the fleet is frozen (...)"
    # Health gates: the batch whose gates passed after it settled, and the latest results.
    gates_passed_batch: int = 0
    gate_results: list[GateResult] = Field(default_factory=list)
    late_joiners: int = 0  # targets added after the start (includeLateJoiners)
    # Why the hosts it updated are to be reverted once it has ended (autoRevert); None: not.
    auto_revert_reason: str | None = None
    revision: int = 0
    # Changes that arrived while the run was ending, written by the next run.
    unwritten_jobs: list[str] = Field(default_factory=list)
    unwritten_messages: dict[str, str] = Field(default_factory=dict)
    unwritten_events: list["AuditEvent"] = Field(default_factory=list)


_STATUSES: tuple[str, ...] = get_args(JobStatus)
_STEPS: tuple[str | None, ...] = (None, *get_args(Step))


def _code(values: tuple[str | None, ...], value: str | None) -> str:
    return chr(ord("a") + values.index(value))


class CarriedJobs(BaseModel):
    """Jobs by column: about 45 bytes a job plus its instance id, against 175 as JobState
    objects, so the largest batch fits a continue-as-new input."""

    ids: list[str] = Field(default_factory=list)
    instance_ids: list[str] = Field(default_factory=list)
    batches: list[int] = Field(default_factory=list)
    attempts: list[int] = Field(default_factory=list)
    statuses: str = ""  # a letter a job: its status's place in JobStatus
    steps: str = ""  # a letter a job: "a" for none, then Step's order
    deadlines: list[datetime] = Field(default_factory=list)  # the distinct ones
    deadline_of: list[int] = Field(default_factory=list)  # a job's place in `deadlines`
    superseded: list[int] = Field(default_factory=list)  # places of superseded jobs

    @classmethod
    def pack(cls, jobs: Iterable[JobState]) -> "CarriedJobs":
        carried = cls()
        places: dict[datetime, int] = {}
        for n, job in enumerate(jobs):
            carried.ids.append(job.id)
            carried.instance_ids.append(job.instance_id)
            carried.batches.append(job.batch)
            carried.attempts.append(job.attempt)
            carried.statuses += _code(_STATUSES, job.status)
            carried.steps += _code(_STEPS, job.step)
            carried.deadline_of.append(places.setdefault(job.deadline, len(places)))
            if job.superseded:
                carried.superseded.append(n)
        carried.deadlines = list(places)
        return carried

    def unpack(self) -> list[JobState]:
        superseded = set(self.superseded)
        return [
            JobState.model_construct(
                id=self.ids[n],
                instance_id=self.instance_ids[n],
                batch=self.batches[n],
                attempt=self.attempts[n],
                status=_STATUSES[ord(self.statuses[n]) - ord("a")],
                step=_STEPS[ord(self.steps[n]) - ord("a")],
                deadline=self.deadlines[self.deadline_of[n]],
                superseded=n in superseded,
            )
            for n in range(len(self.ids))
        ]


class RolloutInput(BaseModel):
    spec: RolloutSpec
    state: RolloutState | None = None  # set by continue-as-new


class RolloutResult(BaseModel):
    status: RolloutStatus
    counts: dict[str, int]


# --- signals -----------------------------------------------------------------------------------


class JobReportSignal(BaseModel):
    job_id: str
    instance_id: str
    status: ReportStatus
    step: Step | None = None
    message: str | None = None


class JobReportBatchSignal(BaseModel):
    """Reports that reached one API process together, in one signal: one history event and one
    server write for many (temporal_client.report_signals)."""

    reports: list[JobReportSignal]


# --- updates (admin actions); pause and resume are signals too --------------------------------


class ActionInput(BaseModel):
    actor: str = "temporal"


class AdvanceInput(ActionInput):
    force: bool = False  # release it outside the maintenance window (audited)


class PauseInput(ActionInput):
    reason: str | None = None


class ResumeInput(ActionInput):
    pass


class RetryInput(ActionInput):
    pass


class AbortInput(ActionInput):
    reason: str | None = None
    # The abort a revert makes first: no automatic revert follows it (autoRevert).
    by_revert: bool = False


class FreezeInput(ActionInput):
    reason: str


class ThawInput(ActionInput):
    pass


class ActionResult(BaseModel):
    status: RolloutStatus
    current_batch: int
    message: str


class WaitStartedInput(BaseModel):
    pass


# --- queries -----------------------------------------------------------------------------------


class RolloutView(RolloutSnapshot):
    """The live state: the workflow's answer, fresher than the read model."""

    note: str | None
    jobs: list[JobState]  # the current batch, every attempt; see `jobs_complete`
    # False for a batch over VIEW_JOBS: then `jobs` holds only the jobs whose change the read
    # model does not show yet (a whole batch of 10,000 would exceed Temporal's 2 MiB answer).
    jobs_complete: bool = True


class JobForInstanceQuery(BaseModel):
    instance_id: str


class HandedOutJob(BaseModel):
    id: str
    rollout_id: str
    release_id: str
    deadline: str  # ISO 8601


class JobForInstanceResult(BaseModel):
    job: HandedOutJob | None


# --- activities --------------------------------------------------------------------------------


class AutoRevertInput(BaseModel):
    rollout_id: str
    reason: str  # why it is reverted: its abort, or the gate that failed


class AutoRevertResult(BaseModel):
    spec: RolloutSpec | None  # the revert to start; None: none (audited why)


class SnapshotTargetsInput(BaseModel):
    rollout_id: str
    channel: str
    version: str


class SnapshotTargetsResult(BaseModel):
    target_count: int


class LateTargetsInput(BaseModel):
    rollout_id: str
    channel: str
    version: str


class WatchGatesInput(BaseModel):
    gates: list[Gate]
    until: datetime  # the end of the bake (now, for a single look)
    interval_seconds: float


class WatchGatesResult(BaseModel):
    results: list[GateResult]


class BatchTargetsInput(BaseModel):
    rollout_id: str
    start: int  # targets before this batch
    limit: int  # the batch size


class BatchTargetsResult(BaseModel):
    instance_ids: list[str]


class ReportedStepsInput(BaseModel):
    job_ids: list[str]


class ReportedStepsResult(BaseModel):
    """The step each job last reported (the workflow is told only of starts and ends)."""

    steps: dict[str, Step]


class AuditEvent(BaseModel):
    actor: str
    action: str
    detail: dict[str, Any] = Field(default_factory=dict)


class RecordProgressInput(BaseModel):
    progress: RolloutProgress | None  # None for the extra chunks of a large job write
    jobs: list[JobWrite]
    events: list[AuditEvent] = Field(default_factory=list)


class RecordProgressResult(BaseModel):
    applied: bool


RolloutState.model_rebuild()
