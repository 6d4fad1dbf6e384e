"""Update jobs as the read model holds them (PROTOCOL §4, admin)."""

from datetime import datetime

from fastapi import APIRouter, Query
from pydantic import BaseModel

from api.deps import AdminActor, PoolDep
from api.responses import admin_errors
from contract.wire import ID_PATTERN, JobStatus
from store import jobs

router = APIRouter(prefix="/api/updates/jobs", tags=["jobs"], responses=admin_errors())


class JobOut(BaseModel):
    """A job as a rollout's batches show it."""

    id: str
    instanceId: str
    batch: int
    attempt: int
    status: str
    step: str | None
    message: str | None
    deadline: datetime


class JobListItem(JobOut):
    """A job on its own, in listings across rollouts."""

    rolloutId: str
    createdAt: datetime
    updatedAt: datetime


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
    return [
        JobListItem(
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
        for j in rows
    ]
