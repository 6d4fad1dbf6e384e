"""Update jobs as the read model holds them (PROTOCOL §4, admin), and one job with its
per-step timeline (docs/protocol.md, project extension)."""

from fastapi import APIRouter, Query

from api.deps import AdminActor, IdPath, PoolDep
from api.openapi import admin_errors, not_found
from api.schemas import JobDetailOut, JobOut
from contract.wire import ID_PATTERN, JobStatus
from services import jobs as job_service
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


@router.get("/{job_id}", response_model=JobDetailOut, responses=not_found())
async def get_job(job_id: IdPath, _: AdminActor, pool: PoolDep) -> JobDetailOut:
    """The stored job, with the timeline derived from its acknowledged reports."""
    return JobDetailOut.from_detail(await job_service.detail(pool, job_id))
