"""Update jobs as the read model holds them (PROTOCOL §4, admin), and one job with its
per-step timeline (docs/protocol.md, project extension)."""

from datetime import datetime

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel

from api.deps import AdminActor, IdPath, PoolDep
from api.responses import admin_errors, not_found
from api.timeline import TimelineStep, job_timeline
from contract.wire import ID_PATTERN, JobStatus
from store import job_reports, jobs
from store.jobs import Job

router = APIRouter(prefix="/api/updates/jobs", tags=["jobs"], responses=admin_errors())


class JobOut(BaseModel):
    """A job as a rollout's batches show it."""

    id: str
    instanceId: str
    batch: int
    attempt: int
    status: JobStatus
    step: str | None
    message: str | None
    deadline: datetime


class JobListItem(JobOut):
    """A job on its own, in listings across rollouts."""

    rolloutId: str
    createdAt: datetime
    updatedAt: datetime


class JobDetailOut(JobListItem):
    """One job and its steps as its agent reported them, in the order they ran."""

    timeline: list[TimelineStep]


def _list_item(j: Job) -> JobListItem:
    return JobListItem(
        id=j.id,
        rolloutId=j.rollout_id,
        instanceId=j.instance_id,
        batch=j.batch,
        attempt=j.attempt,
        status=j.status,
        step=j.step,
        message=j.message,
        deadline=j.deadline,
        createdAt=j.created_at,
        updatedAt=j.updated_at,
    )


@router.get("", response_model=list[JobListItem])
async def list_jobs(
    _: AdminActor,
    pool: PoolDep,
    status: JobStatus | None = Query(default=None),
    rollout_id: str | None = Query(default=None, alias="rolloutId", pattern=ID_PATTERN),
    instance_id: str | None = Query(default=None, alias="instanceId", pattern=ID_PATTERN),
    limit: int = Query(default=500, ge=1, le=10_000),
) -> list[JobListItem]:
    """Newest first; `limit` bounds the answer on fleet-sized rollouts."""
    rows = await jobs.list_filtered(
        pool, status=status, rollout_id=rollout_id, instance_id=instance_id, limit=limit
    )
    return [_list_item(j) for j in rows]


@router.get("/{job_id}", response_model=JobDetailOut, responses=not_found())
async def get_job(job_id: IdPath, _: AdminActor, pool: PoolDep) -> JobDetailOut:
    """The stored job, with the timeline derived from its acknowledged reports."""
    job = await jobs.get(pool, job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    reports = await job_reports.for_jobs(pool, [job_id])
    steps = job_timeline(job.status, reports.get(job_id, []))
    return JobDetailOut(**_list_item(job).model_dump(), timeline=steps)
