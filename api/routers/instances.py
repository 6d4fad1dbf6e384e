"""The fleet registry (admin): paged listings with filters, and each instance's lifecycle
(services/instances.py): decommission with DELETE, admit (approve a pending instance, or take
a decommissioned one back) with POST .../admit, hold out of new rollouts with POST .../hold and
release with DELETE .../hold. Each is audited."""

from typing import Literal

from fastapi import APIRouter, Query, Response

from api.deps import AdminActor, IdPath, PoolDep
from api.openapi import admin_errors, not_found
from api.schemas import HoldBody, InstanceOut
from contract.manifest import Channel
from services import instances as instance_service
from store import instances

router = APIRouter(prefix="/api/instances", tags=["instances"], responses=admin_errors())

TOTAL_HEADER = "x-total-count"
MAX_PAGE = 10_000


@router.get(
    "",
    response_model=list[InstanceOut],
    responses={200: {"headers": {TOTAL_HEADER: {"description": "instances matching the filters"}}}},
)
async def list_instances(
    _: AdminActor,
    pool: PoolDep,
    response: Response,
    channel: Channel | None = Query(default=None),
    state: Literal["active", "pending", "decommissioned"] | None = Query(default=None),
    version: str | None = Query(
        default=None, pattern=r"^[0-9A-Za-z.+-]{1,128}$", description="current version"
    ),
    not_seen_for_seconds: int | None = Query(
        default=None,
        alias="notSeenForSeconds",
        ge=0,
        le=10 * 366 * 86_400,  # an int4 in SQL
        description="only instances whose last poll is older than this",
    ),
    limit: int = Query(default=500, ge=1, le=MAX_PAGE),
    offset: int = Query(default=0, ge=0, le=10_000_000),
) -> list[InstanceOut]:
    """In instance-id order, a page at a time; `x-total-count` says how many match."""
    page = await instances.list_page(
        pool,
        channel=channel,
        state=state,
        version=version,
        not_seen_for_seconds=not_seen_for_seconds,
        limit=limit,
        offset=offset,
    )
    response.headers[TOTAL_HEADER] = str(page.total)
    return [InstanceOut(**i.model_dump()) for i in page.instances]


@router.get("/{instance_id}", response_model=InstanceOut, responses=not_found())
async def get_instance(instance_id: IdPath, _: AdminActor, pool: PoolDep) -> InstanceOut:
    return InstanceOut(**(await instance_service.get(pool, instance_id)).model_dump())


@router.delete("/{instance_id}", response_model=InstanceOut, responses=not_found())
async def decommission_instance(
    instance_id: IdPath, actor: AdminActor, pool: PoolDep
) -> InstanceOut:
    """Its polls are refused (403) until it is admitted again, and it is no new rollout's
    target; the row stays, `state: decommissioned`. Again: the same answer, nothing changes."""
    moved = await instance_service.decommission(pool, instance_id, actor=actor)
    return InstanceOut(**moved.model_dump())


@router.post("/{instance_id}/admit", response_model=InstanceOut, responses=not_found())
async def admit_instance(instance_id: IdPath, actor: AdminActor, pool: PoolDep) -> InstanceOut:
    """A pending instance is approved, a decommissioned one taken back: `state: active`."""
    moved = await instance_service.admit(pool, instance_id, actor=actor)
    return InstanceOut(**moved.model_dump())


@router.post("/{instance_id}/hold", response_model=InstanceOut, responses=not_found())
async def hold_instance(
    instance_id: IdPath, body: HoldBody, actor: AdminActor, pool: PoolDep
) -> InstanceOut:
    """Left out of new rollouts' targets (with this reason) until released; a rollout already
    running goes on with it. Again: the reason is replaced."""
    held = await instance_service.hold(pool, instance_id, reason=body.reason, actor=actor)
    return InstanceOut(**held.model_dump())


@router.delete("/{instance_id}/hold", response_model=InstanceOut, responses=not_found())
async def release_instance_hold(
    instance_id: IdPath, actor: AdminActor, pool: PoolDep
) -> InstanceOut:
    """New rollouts may target it again. Again, or never held: the same answer."""
    released = await instance_service.release_hold(pool, instance_id, actor=actor)
    return InstanceOut(**released.model_dump())
