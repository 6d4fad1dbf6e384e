"""The wire contract's names and agent models (PROTOCOL §4-§5): statuses and the moves a job
may make, steps and the agent requests, shared by the API, the workflow, the store and the agent
so all read one contract."""

from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

from contract.downgrade import DowngradePermission
from contract.manifest import (
    TIMESTAMP_SCHEMA,
    VERSION_SCHEMA,
    Channel,
    ReleaseManifest,
    parse_timestamp,
    parse_version,
)
from contract.text import storable

# Every identifier (instances, jobs, rollouts, releases): checked before it reaches SQL.
ID_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"
INSTANCE_ID_PATTERN = ID_PATTERN
# An agent's self-reported version: printable ASCII, so it is shown as sent.
AGENT_VERSION_PATTERN = r"^[!-~]{1,64}$"
NONCE_PATTERN = r"^[A-Za-z0-9_-]{16,64}$"
MAX_BODY_BYTES = 64 * 1024
MAX_MESSAGE_BYTES = 4 * 1024
# A job stores at most this many `in_progress` reports, then only its final one: an agent
# reports each step's start once (9 in all), so this is room for restarts, and a bound on what a
# job's timeline answers (each report's message is up to MAX_MESSAGE_BYTES).
MAX_PROGRESS_REPORTS_PER_JOB = 32
SIGNATURE_WINDOW_SECONDS = 300
AGENT_SIGNATURE_HEADER = "x-agent-signature"
RESPONSE_SIGNATURE_HEADER = "x-cp-signature"

ReportStatus = Literal["in_progress", "succeeded", "failed", "rolled_back", "rollback_failed"]
Step = Literal[
    "preflight",
    "backup",
    "pull",
    "migrate",
    "smoke",
    "switch",
    "health",
    "rollback",
    "restore",  # an extension (docs/protocol.md): a fleet revert's data restore
]
# The steps that run an operator's command (`UPDATE_<STEP>_CMD`, PROTOCOL §6), in order.
COMMAND_STEPS: tuple[Step, ...] = ("backup", "pull", "migrate", "smoke", "switch")
# Every step of an update after preflight, in order: the commands, then the health check.
UPDATE_STEPS: tuple[Step, ...] = (*COMMAND_STEPS, "health")
JobStatus = Literal[
    "pending",
    "in_progress",
    "succeeded",
    "failed",
    "rolled_back",
    "rollback_failed",
    "timed_out",
    "cancelled",
    "unreachable",  # an extension (docs/protocol.md): admin-side only, agents never see it
]
# Every job status, in the order a job goes through them (SQL status lists are written in it).
JOB_STATUSES: tuple[JobStatus, ...] = get_args(JobStatus)
_REPORTED_ENDS = frozenset({"succeeded", "failed", "rolled_back", "rollback_failed"})
# A job's allowed moves, declared once: the rollout state machine is tested against them
# (tests/test_rollout_machine.py) and the read model's SQL guards are rendered from them
# (store/statuses.py). A job moves forward only; a retry is a new job (attempt + 1), the old one
# superseded. Past its deadline, a job its host never started ends `unreachable` (the agent is
# down or cut off: not an application failure), one that started ends `timed_out` at the step it
# reached.
JOB_GRAPH: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "pending": frozenset(
            {"in_progress", *_REPORTED_ENDS, "timed_out", "cancelled", "unreachable"}
        ),
        "in_progress": frozenset({*_REPORTED_ENDS, "timed_out", "cancelled"}),
        "succeeded": frozenset(),
        "failed": frozenset(),
        "rolled_back": frozenset(),
        "rollback_failed": frozenset(),
        "timed_out": frozenset(),
        "cancelled": frozenset(),
        "unreachable": frozenset(),
    }
)
# Open: handed out to agents and still moving. Terminal (settled): no move left.
OPEN_JOB_STATUSES: frozenset[str] = frozenset(s for s, moves in JOB_GRAPH.items() if moves)
TERMINAL_JOB_STATUSES: frozenset[str] = frozenset(s for s, moves in JOB_GRAPH.items() if not moves)
# The ends the control plane decides without the host (its deadline, an abort): a job ended so
# may still be running on its host, whose agent learns of it from the refusal of its next report
# and stops (docs/protocol.md, "a job the control plane ended").
CONTROL_PLANE_ENDS: frozenset[str] = TERMINAL_JOB_STATUSES - _REPORTED_ENDS

# Rollout `status` (PROTOCOL §4). store/statuses.py renders the finished ones into SQL; the
# partial unique index of migration 0003 spells them too (tests/test_status_sql.py checks it).
# `waiting`: a project extension (docs/protocol.md): held by a fleet freeze, nothing released.
RolloutStatus = Literal["running", "awaiting_advance", "paused", "waiting", "completed", "aborted"]
ROLLOUT_STATUSES: tuple[RolloutStatus, ...] = get_args(RolloutStatus)
FINISHED_ROLLOUT_STATUSES: frozenset[RolloutStatus] = frozenset({"completed", "aborted"})


class AgentRequest(BaseModel):
    """Fields every signed agent request carries."""

    model_config = ConfigDict(extra="forbid", strict=True)

    instanceId: str = Field(pattern=INSTANCE_ID_PATTERN)
    sentAt: str = Field(json_schema_extra=TIMESTAMP_SCHEMA)
    nonce: str = Field(pattern=NONCE_PATTERN)

    @field_validator("sentAt")
    @classmethod
    def _utc_timestamp(cls, value: str) -> str:
        parsed = parse_timestamp(value)
        if parsed.utcoffset() != parse_timestamp("2000-01-01T00:00:00Z").utcoffset():
            raise ValueError(f"{value!r} is not UTC (use Z or +00:00)")
        return value


# What an agent may declare it does beyond the contract (an extension, docs/protocol.md):
# `downgrade`: it checks a revert job's downgrade permission (contract.downgrade) before going
# down, so it may be sent one. Unknown names are accepted and ignored, for agents newer than this.
DOWNGRADE_CAPABILITY = "downgrade"
CAPABILITY_PATTERN = r"^[a-z0-9-]{1,32}$"
MAX_CAPABILITIES = 16


class PollRequest(AgentRequest):
    channel: Channel
    currentVersion: str = Field(json_schema_extra=VERSION_SCHEMA)
    agentVersion: str | None = Field(default=None, pattern=AGENT_VERSION_PATTERN)
    capabilities: list[Annotated[str, Field(pattern=CAPABILITY_PATTERN)]] = Field(
        default_factory=list, max_length=MAX_CAPABILITIES
    )

    @property
    def accepts_downgrade(self) -> bool:
        return DOWNGRADE_CAPABILITY in self.capabilities

    @field_validator("currentVersion")
    @classmethod
    def _semver(cls, value: str) -> str:
        parse_version(value)
        return value


class ReportRequest(AgentRequest):
    jobId: str = Field(pattern=ID_PATTERN)
    status: ReportStatus
    step: Step | None
    message: str | None = None

    @field_validator("message", mode="before")
    @classmethod
    def _storable(cls, value: object) -> object:
        """Step output may hold NUL or a lone surrogate: replaced (before pydantic refuses the
        surrogate), never a reason to lose the outcome. Runs on the parsed document, after the
        signature was checked over the raw bytes."""
        return storable(value) if isinstance(value, str) else value

    @field_validator("message")
    @classmethod
    def _bounded(cls, value: str | None) -> str | None:
        if value is not None and len(value.encode()) > MAX_MESSAGE_BYTES:
            raise ValueError(f"longer than {MAX_MESSAGE_BYTES} bytes")
        return value


class JobAssignment(BaseModel):
    id: str
    rolloutId: str
    manifest: ReleaseManifest
    deadline: str  # wire_deadline
    # A fleet revert's job (an extension, docs/protocol.md): the host may go down to `manifest`.
    downgrade: DowngradePermission | None = None


def wire_deadline(deadline: datetime) -> str:
    """A job's deadline as handed out (PROTOCOL §5): ISO 8601 in UTC, with a `Z`."""
    return deadline.isoformat().replace("+00:00", "Z")


class PollResponse(BaseModel):
    nonce: str
    job: JobAssignment | None


class ReportResponse(BaseModel):
    nonce: str
    jobId: str
    status: JobStatus
    accepted: bool = True


class ReportRefusal(BaseModel):
    """The 409 answer to a report, signed like every answer (an extension: docs/protocol.md).
    `jobStatus` is the job's status: a settled one means the job has ended and its host must not
    go on with it. `hostOutcome` and `hostStep`: the final report recorded as what the host
    ended on, for a job the control plane ended (CONTROL_PLANE_ENDS)."""

    nonce: str | None = None
    detail: str
    jobStatus: JobStatus | None = None
    hostOutcome: ReportStatus | None = None
    hostStep: Step | None = None
