"""A fleet freeze ("stop the line"), per channel or for every channel: while one holds a channel,
no rollout on it is created, advanced or retried, and none hands out a pending job (its
workflow is `waiting`, its pending jobs' deadlines stopped); running jobs finish. Lifting it puts
each rollout back where it was. Every change is audited.

The freeze is stored first (a create after it is refused), then each unfinished rollout in its
scope is told (a workflow update, answered once its read model says `waiting`, so polls on every
API process withhold from then on). Should Temporal not answer for some, the request answers 503
naming how many: the freeze stands, and the same request again tells the rest.
"""

import asyncpg
from pydantic import BaseModel
from temporalio.client import Client

from services.errors import Conflict
from store import audit, freezes, rollouts
from store.freezes import EVERY_CHANNEL, Freeze
from temporal_client import rollouts as rollout_client
from temporal_client.rollouts import RolloutGone, RolloutUnavailable

ACTION_TIMEOUT = 15.0


class Told(BaseModel):
    freezes: list[Freeze]  # in force now
    rollouts: list[str]  # the rollouts told (frozen or thawed)


async def freeze(
    pool: asyncpg.Pool, temporal: Client, *, channel: str | None, reason: str, actor: str
) -> Told:
    scope = channel or EVERY_CHANNEL
    async with pool.acquire() as conn, conn.transaction():
        await freezes.set_freeze(conn, scope, reason=reason, actor=actor)
        await audit.record(
            conn,
            actor=actor,
            action="fleet.frozen",
            subject=f"freeze:{scope}",
            detail={"reason": reason},
        )
    told = await _tell(
        pool, temporal, await rollouts.freezable(pool, channel), "freeze", actor, reason
    )
    return Told(freezes=await freezes.in_force(pool), rollouts=told)


async def thaw(pool: asyncpg.Pool, temporal: Client, *, channel: str | None, actor: str) -> Told:
    scope = channel or EVERY_CHANNEL
    lifted = await freezes.clear(pool, scope)
    if lifted is not None:
        await audit.record(
            pool, actor=actor, action="fleet.thawed", subject=f"freeze:{scope}", detail={}
        )
    still = {f.channel for f in await freezes.in_force(pool)}
    free = [
        (rollout_id, on)
        for rollout_id, on in await rollouts.freezable(pool, channel)
        if EVERY_CHANNEL not in still and on not in still
    ]
    told = await _tell(pool, temporal, free, "thaw", actor, None)
    return Told(freezes=await freezes.in_force(pool), rollouts=told)


async def refuse_if_frozen(
    conn: asyncpg.Connection, channel: str, *, override: str | None = None
) -> Freeze | None:
    """In the transaction that creates a rollout on `channel`: Conflict while it is frozen,
    unless this is a revert with a freeze `override` (its reason); the freeze overridden."""
    holding = await freezes.holding(conn, channel)
    if holding is not None and override is None:
        scope = "the fleet" if holding.channel == EVERY_CHANNEL else f"channel {channel}"
        raise Conflict(
            f"{scope} is frozen since {holding.frozen_at:%Y-%m-%d %H:%M} UTC by"
            f" {holding.frozen_by} ({holding.reason}): no rollout is created until it is lifted"
            " (DELETE /api/freeze); a revert may run through it with a freezeOverride reason"
            " (audited)"
        )
    return holding


async def _tell(
    pool: asyncpg.Pool,
    temporal: Client,
    targets: list[tuple[str, str]],
    action: str,
    actor: str,
    reason: str | None,
) -> list[str]:
    told, missed = [], []
    for rollout_id, _ in targets:
        try:
            await rollout_client.run_action(
                temporal,
                rollout_id,
                action,
                rollout_client.action_input(action, actor, reason),
                timeout=ACTION_TIMEOUT,
            )
        except rollout_client.ActionRefused:
            continue  # it finished meanwhile
        except (RolloutUnavailable, RolloutGone):
            missed.append(rollout_id)
            continue
        told.append(rollout_id)
    if missed:
        raise RolloutUnavailable(
            f"the freeze is stored, but {len(missed)} rollout(s) did not hear of it in time"
            f" ({', '.join(missed[:5])}): send the same request again"
        )
    return told
