"""An instance's lifecycle, in domain terms: who is admitted when it first polls, why a poll is
refused, and the admin's decommission and admission (audited). api/routers/agent.py and
api/routers/instances.py map them to HTTP.

A fleet-wide token (CONTROL_PLANE_AGENT_TOKEN) lets anyone holding it invent instance ids, and
every id recorded becomes a rollout's target. With NEW_INSTANCES_NEED_APPROVAL on, an id first
seen with that token waits, `pending`, until an admin admits it (a bounded number wait at once);
an id with its own secret in CONTROL_PLANE_AGENT_SECRETS was configured by an operator and is
admitted at once. A decommissioned instance stays recorded (its jobs and audit keep their
subject), and its polls are refused until an admin admits it again: a host that was retired on
purpose does not come back by itself, and an id cannot be reused unnoticed.
"""

import asyncpg

from server.settings import ApiSettings
from services.errors import NotFound
from store import audit, instances
from store.instances import MAX_PENDING_INSTANCES, Instance, InstanceState


def admitted_as(settings: ApiSettings, instance_id: str) -> InstanceState:
    """The state a new instance polling now is recorded in."""
    if settings.new_instances_need_approval and instance_id not in settings.agent_secret_values:
        return "pending"
    return "active"


def poll_refusal(instance_id: str, state: str | None) -> str | None:
    """Why a poll of an instance in `state` (None: it could not be recorded) gets no answer
    but a 403, or None for an active instance."""
    if state == "active":
        return None
    admit = f"POST /api/instances/{instance_id}/admit (rollout instances admit {instance_id})"
    if state == "pending":
        return f"instance {instance_id} awaits an admin's approval: {admit}"
    if state == "decommissioned":
        return f"instance {instance_id} is decommissioned; an admin must admit it again: {admit}"
    return (
        f"instance {instance_id} is not admitted: {MAX_PENDING_INSTANCES} instances already"
        " await an admin's approval"
    )


async def get(pool: asyncpg.Pool, instance_id: str) -> Instance:
    found = await instances.get(pool, instance_id)
    if found is None:
        raise NotFound(f"instance {instance_id} not found")
    return found


async def decommission(pool: asyncpg.Pool, instance_id: str, *, actor: str) -> Instance:
    """Refuse the instance's polls and leave it out of new rollouts' targets. Its open jobs are
    not handed out again: they end `unreachable` at their deadline (or by an abort)."""
    return await _move(pool, instance_id, "decommissioned", actor=actor)


async def admit(pool: asyncpg.Pool, instance_id: str, *, actor: str) -> Instance:
    """Approve a pending instance, or take a decommissioned one back."""
    return await _move(pool, instance_id, "active", actor=actor)


async def _move(
    pool: asyncpg.Pool, instance_id: str, state: InstanceState, *, actor: str
) -> Instance:
    """Audited when the state changes; the same request again answers the instance as it is."""
    async with pool.acquire() as conn, conn.transaction():
        before = await instances.get(conn, instance_id)
        if before is None:
            raise NotFound(f"instance {instance_id} not found")  # as `get`, in the transaction
        moved = await instances.set_state(conn, instance_id, state)
        if moved is None:
            return before
        action = "instance.decommissioned" if state == "decommissioned" else "instance.admitted"
        await audit.record(
            conn,
            actor=actor,
            action=action,
            subject=f"instance:{instance_id}",
            detail={"from": before.state, "to": state},
        )
        return moved


async def hold(pool: asyncpg.Pool, instance_id: str, *, reason: str, actor: str) -> Instance:
    """Keep the instance out of new rollouts' targets until released; its running jobs go on.
    Audited; holding a held instance again changes its reason."""
    async with pool.acquire() as conn, conn.transaction():
        held = await instances.hold(conn, instance_id, reason=reason, actor=actor)
        if held is None:
            raise NotFound(f"instance {instance_id} not found")
        await audit.record(
            conn,
            actor=actor,
            action="instance.held",
            subject=f"instance:{instance_id}",
            detail={"reason": reason},
        )
        return held


async def release_hold(pool: asyncpg.Pool, instance_id: str, *, actor: str) -> Instance:
    """New rollouts may target it again. Audited when it was held; again: nothing changes."""
    async with pool.acquire() as conn, conn.transaction():
        released = await instances.release_hold(conn, instance_id)
        if released is None:
            return await get(pool, instance_id)  # not held (or unknown: NotFound)
        await audit.record(
            conn,
            actor=actor,
            action="instance.hold_released",
            subject=f"instance:{instance_id}",
            detail={},
        )
        return released
