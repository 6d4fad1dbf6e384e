"""Update jobs as the read model holds them (PROTOCOL §4, admin)."""

from fastapi import APIRouter, Query

from api.deps import AdminActor, PoolDep
from api.responses import admin_errors
from api.schemas import JobOut
from contract.wire import ID_PATTERN, JobStatus
from store import jobs

router = APIRouter(prefix="/api/updates/jobs", tags=["jobs"], responses=admin_errors())


@router.get("", response_model=list[JobOut])
async def list_jobs(
    _: AdminActor,
    pool: PoolDep,
    status: JobStatus | None = Query(default=None),
    rollout_id: str | None = Query(default=None, alias="rolloutId", pattern=ID_PATTERN),
    instance_id: str | None = Query(default=None, alias="instanceId", pattern=ID_PATTERN),
    limit: int = Query(default=500, ge=1, le=10_000),
) -> list[JobOut]:
    """Newest first; `limit` bounds the answer on fleet-sized rollouts."""
    rows = await jobs.list_filtered(
        pool, status=status, rollout_id=rollout_id, instance_id=instance_id, limit=limit
    )
    return [JobOut.from_job(j) for j in rows]
