"""The fleet registry as agents' polls keep it (admin)."""

from fastapi import APIRouter, Query

from api.deps import AdminActor, PoolDep
from api.openapi import admin_errors
from api.schemas import InstanceOut
from contract.manifest import Channel
from store import instances

router = APIRouter(prefix="/api/instances", tags=["instances"], responses=admin_errors())


@router.get("", response_model=list[InstanceOut])
async def list_instances(
    _: AdminActor, pool: PoolDep, channel: Channel | None = Query(default=None)
) -> list[InstanceOut]:
    return [InstanceOut(**i.model_dump()) for i in await instances.list_all(pool, channel=channel)]
