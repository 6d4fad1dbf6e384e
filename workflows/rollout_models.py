"""Typed inputs and outputs of RolloutWorkflow: its run, signals, updates, queries, activities.

Everything crossing Temporal goes through `pydantic_data_converter`, so these are the wire
format of workflow histories: add fields with defaults only, or recorded histories break.
"""

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from contract.wire import JobStatus, ReportStatus, RolloutStatus, Step
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
# The largest batch a rollout may have (the API refuses more). A run carries its current batch:
# about 210 bytes a job in its state (continue-as-new input, view query) and 250 in the handouts
# query, so 1,000 jobs stay near 0.25 MB, a tenth of Temporal's 2 MiB payload limit; and a
# workflow task's work grows with the batch (2,000 tripped the SDK's 2 s deadlock detector on a
# loaded 2-core machine). docs/performance.md, benchmarks/targets_100k.py.
MAX_BATCH_SIZE = 1_000


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
    # Runs started before targets-in-postgres carry the whole list; later ones only its length
    # (the targets are in PostgreSQL, read a batch at a time). Both None until they are known.
    targets: list[str] | None = None
    target_count: int | None = None
    current_batch: int = 0
    jobs: list[JobState] = Field(default_factory=list)  # the current batch, every attempt
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
    revision: int = 0
    # Changes that arrived while the run was ending, written by the next run.
    unwritten_jobs: list[str] = Field(default_factory=list)
    unwritten_messages: dict[str, str] = Field(default_factory=dict)
    unwritten_events: list["AuditEvent"] = Field(default_factory=list)


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
    server write for many (workflows.report_signals)."""

    reports: list[JobReportSignal]


# --- updates (admin actions); pause and resume are signals too --------------------------------


class ActionInput(BaseModel):
    actor: str = "temporal"


class AdvanceInput(ActionInput):
    pass


class PauseInput(ActionInput):
    reason: str | None = None


class ResumeInput(ActionInput):
    pass


class RetryInput(ActionInput):
    pass


class AbortInput(ActionInput):
    reason: str | None = None


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
    jobs: list[JobState]  # the current batch


class JobForInstanceQuery(BaseModel):
    instance_id: str


class HandedOutJob(BaseModel):
    id: str
    rollout_id: str
    release_id: str
    deadline: str  # ISO 8601


class JobForInstanceResult(BaseModel):
    job: HandedOutJob | None


class HandoutsQuery(BaseModel):
    pass


class Handouts(BaseModel):
    """Every job agents may run now, by instance id: empty while paused or finished. One query
    answers the polls of a whole batch."""

    jobs: dict[str, HandedOutJob]


# --- activities --------------------------------------------------------------------------------


class SnapshotTargetsInput(BaseModel):
    rollout_id: str
    channel: str
    version: str


class SnapshotTargetsResult(BaseModel):
    target_count: int


class BatchTargetsInput(BaseModel):
    rollout_id: str
    start: int  # targets before this batch
    limit: int  # the batch size


class BatchTargetsResult(BaseModel):
    instance_ids: list[str]


# Only for runs started before targets-in-postgres, which load the whole list.
class LoadTargetsInput(BaseModel):
    channel: str
    version: str


class LoadTargetsResult(BaseModel):
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
