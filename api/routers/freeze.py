"""The fleet freeze (admin, services/freezes.py): POST to stop the line on one channel or every
channel, DELETE to lift it, GET to see what is in force. Audited."""

from fastapi import APIRouter, Query

from api.deps import AdminActor, PoolDep, TemporalDep
from api.openapi import admin_errors
from api.schemas import FreezeBody, FreezesOut
from contract.manifest import Channel
from services import freezes as freeze_service
from services.freezes import Told
from store import freezes

router = APIRouter(prefix="/api/freeze", tags=["freeze"], responses=admin_errors())


@router.get("", response_model=FreezesOut)
async def freezes_in_force(_: AdminActor, pool: PoolDep) -> FreezesOut:
    return FreezesOut.from_told(Told(freezes=await freezes.in_force(pool), rollouts=[]))


@router.post("", response_model=FreezesOut)
async def freeze(
    body: FreezeBody, actor: AdminActor, pool: PoolDep, temporal: TemporalDep
) -> FreezesOut:
    """No rollout on the channel (`channel` absent: on any) is created, advanced or retried, and
    none hands out a pending job, until it is lifted; running jobs finish. Answered once every
    unfinished rollout in scope is `waiting` (they are listed). Again: the reason is replaced."""
    told = await freeze_service.freeze(
        pool, temporal, channel=body.channel, reason=body.reason, actor=actor
    )
    return FreezesOut.from_told(told)


@router.delete("", response_model=FreezesOut)
async def thaw(
    actor: AdminActor,
    pool: PoolDep,
    temporal: TemporalDep,
    channel: Channel | None = Query(default=None, description="absent: the fleet-wide freeze"),
) -> FreezesOut:
    """Lifts the freeze of `channel` (or the fleet-wide one); each rollout no freeze holds any
    more goes back to where it was. Again, or none in force: the same answer."""
    return FreezesOut.from_told(
        await freeze_service.thaw(pool, temporal, channel=channel, actor=actor)
    )
