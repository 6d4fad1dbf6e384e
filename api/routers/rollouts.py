"""Rollouts (PROTOCOL §4): create, list, show, and the admin actions, through the workflow.

A rollout's view is the read model (PostgreSQL) with the workflow's live state laid over it;
when Temporal or the worker does not answer quickly, the stored view is served with
`"stale": true` rather than an error.
"""

import uuid
from collections import Counter
from datetime import datetime
from typing import Literal

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field, field_validator
from temporalio.client import Client

from api.deps import AdminActor, HandoutCacheDep, IdPath, PoolDep, SettingsDep, TemporalDep
from api.responses import admin_errors, conflict, not_found
from api.routers.jobs import JobOut
from contract.manifest import Channel
from contract.text import storable
from contract.wire import ID_PATTERN
from store import audit, jobs, releases, rollouts
from store.jobs import Job
from store.rollouts import ChannelBusy, Rollout, RolloutSpec
from workflows import client as rollout_client
from workflows.rollout_models import MAX_BATCH_SIZE, JobState, RolloutStatus, RolloutView

router = APIRouter(prefix="/api/rollouts", tags=["rollouts"], responses=admin_errors())

# A live view must not hold an HTTP request long: the stored view answers instead.
LIVE_VIEW_TIMEOUT = 3.0
# Starting waits until batch 1 is handed out; actions until the workflow accepted them.
START_TIMEOUT = 30.0
ACTION_TIMEOUT = 15.0

Action = Literal["advance", "pause", "resume", "retry", "abort"]
# Bounds of the integer fields (docs/protocol.md): a fleet is at most this many instances.
MAX_FLEET = 100_000


class CreateRollout(BaseModel):
    model_config = ConfigDict(extra="forbid")

    manifestId: str = Field(pattern=ID_PATTERN)
    channel: Channel
    batchSize: int = Field(ge=1, le=MAX_BATCH_SIZE)
    autoAdvance: bool = False
    bakeSeconds: int = Field(default=0, ge=0, le=30 * 86_400)
    maxFailures: int = Field(default=0, ge=0, le=MAX_FLEET)
    jobTimeoutSeconds: int = Field(default=3600, ge=1, le=7 * 86_400)


class ActionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=1000)

    @field_validator("reason", mode="before")
    @classmethod
    def _storable(cls, value: object) -> object:
        """Free text: NUL or a lone surrogate is replaced (before pydantic refuses the
        surrogate), never a reason to refuse a pause."""
        return storable(value) if isinstance(value, str) else value


class BatchOut(BaseModel):
    number: int
    jobs: list[JobOut]


class RolloutSummaryOut(BaseModel):
    id: str
    workflowId: str
    manifestId: str
    version: str
    channel: str
    batchSize: int
    autoAdvance: bool
    bakeSeconds: int
    maxFailures: int
    jobTimeoutSeconds: int
    status: str
    pausedReason: str | None
    currentBatch: int
    totalBatches: int
    targetCount: int
    details: str  # one line, e.g. "batch 2/5 · 7 succeeded · 1 in progress · running"
    createdBy: str
    createdAt: datetime
    updatedAt: datetime
    finishedAt: datetime | None


class RolloutOut(RolloutSummaryOut):
    batches: list[BatchOut]
    counts: dict[str, int]  # the latest attempt of each target, per job status
    stale: bool  # true when the workflow did not answer: this is the last stored view


def _summary(row: Rollout) -> RolloutSummaryOut:
    return RolloutSummaryOut(
        id=row.id,
        workflowId=row.workflow_id,
        manifestId=row.manifest_id,
        version=row.version,
        channel=row.channel,
        batchSize=row.batch_size,
        autoAdvance=row.auto_advance,
        bakeSeconds=row.bake_seconds,
        maxFailures=row.max_failures,
        jobTimeoutSeconds=row.job_timeout_seconds,
        status=row.status,
        pausedReason=row.paused_reason,
        currentBatch=row.current_batch,
        totalBatches=row.total_batches,
        targetCount=row.target_count,
        details=row.details,
        createdBy=row.created_by,
        createdAt=row.created_at,
        updatedAt=row.updated_at,
        finishedAt=row.finished_at,
    )


def _job_out(job: Job, live: JobState | None) -> JobOut:
    """The stored job, with the workflow's fresher status when it is in the current batch.

    The step stays the stored one: it comes from every acknowledged report, while the workflow
    hears only of a job starting and ending."""
    out = JobOut(
        id=job.id,
        instanceId=job.instance_id,
        batch=job.batch,
        attempt=job.attempt,
        status=job.status,
        step=job.step,
        message=job.message,
        deadline=job.deadline,
    )
    if live is not None:
        out.status, out.deadline = live.status, live.deadline
        out.step = job.step or live.step
    return out


def _counts(all_jobs: list[JobOut]) -> dict[str, int]:
    latest: dict[str, JobOut] = {}
    for job in all_jobs:
        if job.instanceId not in latest or job.attempt > latest[job.instanceId].attempt:
            latest[job.instanceId] = job
    return dict(Counter(job.status for job in latest.values()))


async def _view(pool: PoolDep, temporal: Client, row: Rollout) -> RolloutOut:
    live: RolloutView | None = None
    stale = False
    if not row.workflow_closed:
        try:
            live = await rollout_client.live_view(temporal, row.id, timeout=LIVE_VIEW_TIMEOUT)
        except (rollout_client.RolloutUnavailable, rollout_client.RolloutGone):
            stale = True
    stored = await jobs.for_rollout(pool, row.id)
    summary = _summary(row)
    if live is not None:
        summary.status = live.status
        summary.pausedReason = live.paused_reason
        summary.currentBatch = live.current_batch
        summary.totalBatches = live.total_batches
        summary.targetCount = live.target_count
        summary.details = live.details
        summary.finishedAt = live.finished_at
    current = {j.id: j for j in live.jobs} if live else {}
    job_outs = [_job_out(job, current.get(job.id)) for job in stored]
    batches = [
        BatchOut(number=n, jobs=[j for j in job_outs if j.batch == n])
        for n in range(1, summary.totalBatches + 1)
    ]
    return RolloutOut(
        **summary.model_dump(),
        batches=batches,
        counts=_counts(job_outs),
        stale=stale,
    )


async def _row_or_404(pool: PoolDep, rollout_id: str) -> Rollout:
    row = await rollouts.get(pool, rollout_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"rollout {rollout_id} not found")
    return row


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=RolloutOut, responses=conflict()
)
async def create_rollout(
    body: CreateRollout,
    actor: AdminActor,
    pool: PoolDep,
    settings: SettingsDep,
    temporal: TemporalDep,
) -> RolloutOut:
    release = await releases.get(pool, body.manifestId)
    if release is None:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"manifestId: no release with id {body.manifestId}",
        )
    if release.channel != body.channel:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"channel: release {release.version} is for channel {release.channel},"
            f" not {body.channel}",
        )
    spec = RolloutSpec(
        id=uuid.uuid4().hex,
        manifest_id=release.id,
        version=release.version,
        channel=body.channel,
        batch_size=body.batchSize,
        auto_advance=body.autoAdvance,
        bake_seconds=body.bakeSeconds,
        max_failures=body.maxFailures,
        job_timeout_seconds=body.jobTimeoutSeconds,
        created_by=actor,
    )
    async with pool.acquire() as conn, conn.transaction():
        try:
            await rollouts.insert(conn, spec)
        except ChannelBusy as exc:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"channel {exc.channel} already has an unfinished rollout ({exc.rollout_id});"
                " wait for it to complete or abort it",
            ) from None
        await audit.record(
            conn,
            actor=actor,
            action="rollout.created",
            subject=f"rollout:{spec.id}",
            detail={"version": spec.version, "channel": spec.channel, "batchSize": spec.batch_size},
        )
    try:
        await rollout_client.start_rollout(
            temporal, spec, task_queue=settings.temporal_task_queue, timeout=START_TIMEOUT
        )
    except (rollout_client.RolloutUnavailable, rollout_client.RolloutGone) as exc:
        if not await rollout_client.workflow_exists(temporal, spec.id, timeout=LIVE_VIEW_TIMEOUT):
            await rollouts.delete_unstarted(pool, spec.id)
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                f"the rollout engine (Temporal) is unavailable, nothing was created: {exc}",
            ) from None
        # Started, but no worker answered yet: it releases batch 1 when one runs.
    return await _view(pool, temporal, await _row_or_404(pool, spec.id))


@router.get("", response_model=list[RolloutSummaryOut])
async def list_rollouts(
    _: AdminActor,
    pool: PoolDep,
    channel: Channel | None = Query(default=None),
    status_filter: RolloutStatus | None = Query(default=None, alias="status"),
) -> list[RolloutSummaryOut]:
    rows = await rollouts.list_all(pool, channel=channel, status=status_filter)
    return [_summary(row) for row in rows]


@router.get("/{rollout_id}", response_model=RolloutOut, responses=not_found())
async def get_rollout(
    rollout_id: IdPath, _: AdminActor, pool: PoolDep, temporal: TemporalDep
) -> RolloutOut:
    return await _view(pool, temporal, await _row_or_404(pool, rollout_id))


@router.post(
    "/{rollout_id}/{action}", response_model=RolloutOut, responses=not_found() | conflict()
)
async def act_on_rollout(
    rollout_id: IdPath,
    action: Action,
    actor: AdminActor,
    pool: PoolDep,
    temporal: TemporalDep,
    handouts: HandoutCacheDep,
    body: ActionBody | None = None,
) -> RolloutOut:
    row = await _row_or_404(pool, rollout_id)
    if row.workflow_closed:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"rollout is {row.status}; {action} does not apply to a finished rollout",
        )
    reason = body.reason if body else None
    try:
        await rollout_client.run_action(
            temporal,
            rollout_id,
            action,
            rollout_client.action_input(action, actor, reason),
            timeout=ACTION_TIMEOUT,
        )
    except rollout_client.ActionRefused as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except (rollout_client.RolloutUnavailable, rollout_client.RolloutGone) as exc:
        handouts.forget(rollout_id)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"the rollout engine did not answer in time; {action} may not have been applied"
            f" (check GET /api/rollouts/{rollout_id}): {exc}",
        ) from None
    handouts.forget(rollout_id)  # polls see a pause (or a retry's new jobs) at once
    return await _view(pool, temporal, await _row_or_404(pool, rollout_id))
