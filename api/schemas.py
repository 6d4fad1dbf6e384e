"""The admin API's JSON: request bodies and answers, in camelCase (docs/protocol.md §3, naming).

Answers are the store's own types under one alias generator, so a field is declared once and
named once. Request bodies accept the snake_case names too, for scripts written against them.
Releases keep the snake_case names PROTOCOL §2 fixes (`migrations_required`, `created_at`):
they are answered as the store holds them, without this base. Nothing here travels in Temporal
history, whose payloads are serialised by alias.
"""

import re
from typing import Annotated

from pydantic import AnyHttpUrl, BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from contract.manifest import Channel
from contract.text import storable
from domain.plans import batch_sizes
from services.freezes import Told
from services.jobs import JobDetail
from services.previews import PlannedBatch, Prediction, Preview
from services.reverts import NewRevert, RevertPreview
from services.rollouts import NewRollout, RolloutDetail
from services.timeline import JobFailure, TimelineStep
from store.freezes import Freeze
from store.instances import Instance
from store.jobs import Job
from store.reverts import TargetRelease
from store.rollouts import Rollout
from store.webhooks import Delivery, Endpoint


class ApiModel(BaseModel):
    """camelCase on the wire; the Python (snake_case) names are accepted in requests too."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True
    )


def _storable_text(value: object) -> object:
    """Free text (a reason): NUL or a lone surrogate is replaced, before pydantic would refuse
    the surrogate: never a reason to refuse an action."""
    return storable(value) if isinstance(value, str) else value


FreeText = Annotated[str, BeforeValidator(_storable_text)]


class CreateRollout(ApiModel, NewRollout):
    model_config = ConfigDict(extra="forbid")


class RevertBody(ApiModel, NewRevert):
    model_config = ConfigDict(extra="forbid")

    restore_note: Annotated[FreeText, Field(max_length=1000)] | None = None
    freeze_override: Annotated[FreeText, Field(min_length=1, max_length=1000)] | None = None
    reason: Annotated[FreeText, Field(max_length=1000)] | None = None


class TargetReleaseOut(ApiModel, TargetRelease):
    pass


class RevertPreviewOut(ApiModel, RevertPreview):
    """What reverting the rollout now would do (services/reverts.py); nothing was started."""

    targets: list[TargetReleaseOut]  # type: ignore[assignment]  # camelCase, same fields

    @classmethod
    def from_preview(cls, preview: RevertPreview) -> "RevertPreviewOut":
        return cls.model_validate(preview.model_dump())


class ActionBody(ApiModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[FreeText, Field(max_length=1000)] | None = None
    # advance: release the batch outside the rollout's maintenance window (audited)
    force: bool = False


class HoldBody(ApiModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[FreeText, Field(min_length=1, max_length=1000)]


class JobOut(ApiModel, Job):
    """A job as the read model holds it, with the workflow's fresher status where it has one."""

    @classmethod
    def from_job(cls, job: Job) -> "JobOut":
        return cls(**job.model_dump())


class TimelineStepOut(ApiModel, TimelineStep):
    """One step as the agent reported it (services/timeline.py)."""


class JobDetailOut(JobOut):
    """One job and its steps as its agent reported them, in the order they ran."""

    timeline: list[TimelineStepOut]

    @classmethod
    def from_detail(cls, detail: JobDetail) -> "JobDetailOut":
        steps = [TimelineStepOut(**step.model_dump()) for step in detail.timeline]
        return cls(**detail.job.model_dump(), timeline=steps)


class JobFailureOut(ApiModel, JobFailure):
    """Why one job of the current batch failed: the step it failed at and its output."""


class BatchOut(ApiModel):
    number: int
    size: int  # its hosts, as the rollout's plan cut the targets
    jobs: list[JobOut]


class RolloutSummaryOut(ApiModel, Rollout):
    """A rollout's spec and latest snapshot, as listings show it."""

    # Bookkeeping of the read model's writes, not for clients.
    revision: int = Field(exclude=True)
    workflow_closed: bool = Field(exclude=True)

    @classmethod
    def from_row(cls, row: Rollout) -> "RolloutSummaryOut":
        return cls(**row.model_dump())


class RolloutOut(RolloutSummaryOut):
    batches: list[BatchOut]
    counts: dict[str, int]  # the latest attempt of each target, per job status
    stale: bool  # true when the workflow did not answer: this is the last stored view
    # The current batch's failed, rolled-back, rollback-failed, timed-out and unreachable jobs
    # (each host by its newest attempt): the step each failed at and its output
    # (docs/protocol.md); an unreachable job has none.
    failures: list[JobFailureOut]

    @classmethod
    def from_detail(cls, detail: RolloutDetail) -> "RolloutOut":
        by_batch: dict[int, list[JobOut]] = {}
        for job in detail.jobs:
            by_batch.setdefault(job.batch, []).append(JobOut.from_job(job))
        row = detail.rollout
        sizes = batch_sizes(row.batch_size, row.plan, row.target_count)
        batches = [
            BatchOut(number=n, size=size, jobs=by_batch.get(n, []))
            for n, size in enumerate(sizes, start=1)
        ]
        return cls(
            **detail.rollout.model_dump(),
            batches=batches,
            counts=detail.counts,
            stale=detail.stale,
            failures=[JobFailureOut(**f.model_dump()) for f in detail.failures],
        )


class PlannedBatchOut(ApiModel, PlannedBatch):
    pass


class PredictionOut(ApiModel, Prediction):
    pass


class PreviewOut(ApiModel, Preview):
    """What creating the rollout now would do (services/previews.py); nothing was started."""

    batches: list[PlannedBatchOut]  # type: ignore[assignment]  # camelCase, same fields
    prediction: PredictionOut

    @classmethod
    def from_preview(cls, preview: Preview) -> "PreviewOut":
        return cls.model_validate(preview.model_dump())


class FreezeBody(ApiModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[FreeText, Field(min_length=1, max_length=1000)]
    channel: Channel | None = None  # None: every channel


class FreezeOut(ApiModel, Freeze):
    pass


class FreezesOut(ApiModel):
    """The freezes in force, and the rollouts this request told."""

    freezes: list[FreezeOut]
    rollouts: list[str]

    @classmethod
    def from_told(cls, told: Told) -> "FreezesOut":
        return cls.model_validate(told.model_dump())


class WebhookBody(ApiModel):
    model_config = ConfigDict(extra="forbid")

    url: AnyHttpUrl
    # Audit actions ("rollout.status_changed", "fleet.frozen", ...), "job.failed",
    # "job.rolled_back", "job.rollback_failed", or "*" for all.
    events: list[str] = Field(min_length=1, max_length=50)

    @field_validator("events")
    @classmethod
    def _event_names(cls, events: list[str]) -> list[str]:
        for event in events:
            if event != "*" and not re.fullmatch(r"[a-z_]+\.[a-z_]+", event):
                raise ValueError(f"{event!r}: an event like rollout.status_changed, or *")
        return events


class EndpointOut(ApiModel, Endpoint):
    pass


class EndpointCreatedOut(EndpointOut):
    secret: str  # whsec_...: shown once


class DeliveryOut(ApiModel, Delivery):
    pass


class InstanceOut(ApiModel, Instance):
    """An instance as its polls keep it."""
