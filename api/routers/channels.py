"""A channel's default maintenance window (admin, services/windows.py): each rollout created on
the channel without a window of its own takes it. Audited."""

from fastapi import APIRouter, Response, status

from api.deps import AdminActor, PoolDep
from api.openapi import admin_errors, not_found
from contract.manifest import Channel
from domain.windows import MaintenanceWindow
from services import windows as window_service

router = APIRouter(prefix="/api/channels", tags=["channels"], responses=admin_errors())


@router.get("/{channel}/window", response_model=MaintenanceWindow, responses=not_found())
async def get_window(channel: Channel, _: AdminActor, pool: PoolDep) -> MaintenanceWindow:
    return await window_service.get(pool, channel)


@router.put("/{channel}/window", response_model=MaintenanceWindow)
async def put_window(
    channel: Channel, body: MaintenanceWindow, actor: AdminActor, pool: PoolDep
) -> MaintenanceWindow:
    """`{"timezone": "Europe/Berlin", "ranges": [{"days": ["sat", "sun"], "start": "01:00",
    "end": "04:00"}]}`: rollouts created from now on, without a window of their own, release
    batches and hand out jobs only inside it. Rollouts already running keep theirs."""
    return await window_service.put(pool, channel, body, actor=actor)


@router.delete("/{channel}/window", status_code=status.HTTP_204_NO_CONTENT)
async def clear_window(channel: Channel, actor: AdminActor, pool: PoolDep) -> Response:
    await window_service.clear(pool, channel, actor=actor)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
