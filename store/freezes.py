"""fleet_freezes: the freezes in force, one per channel or `*` for the whole fleet."""

from datetime import datetime

import asyncpg
from pydantic import BaseModel

EVERY_CHANNEL = "*"
# Creating a rollout and freezing take this lock (shared, exclusive): a freeze waits for the
# creates in flight, and every create after it sees it.
_LOCK = "fleet_freezes"


class Freeze(BaseModel):
    channel: str  # `*`: every channel
    reason: str
    frozen_by: str
    frozen_at: datetime


async def set_freeze(conn: asyncpg.Connection, channel: str, *, reason: str, actor: str) -> Freeze:
    """Freeze (or change the reason of a freeze); in the caller's transaction."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", _LOCK)
    row = await conn.fetchrow(
        "INSERT INTO fleet_freezes (channel, reason, frozen_by) VALUES ($1, $2, $3)"
        " ON CONFLICT (channel) DO UPDATE SET reason = EXCLUDED.reason"
        " RETURNING channel, reason, frozen_by, frozen_at",
        channel,
        reason,
        actor,
    )
    return Freeze.model_validate(dict(row))


async def clear(conn: asyncpg.Connection | asyncpg.Pool, channel: str) -> Freeze | None:
    row = await conn.fetchrow(
        "DELETE FROM fleet_freezes WHERE channel = $1 RETURNING channel, reason, frozen_by,"
        " frozen_at",
        channel,
    )
    return Freeze.model_validate(dict(row)) if row else None


async def in_force(conn: asyncpg.Connection | asyncpg.Pool) -> list[Freeze]:
    rows = await conn.fetch(
        "SELECT channel, reason, frozen_by, frozen_at FROM fleet_freezes ORDER BY channel"
    )
    return [Freeze.model_validate(dict(r)) for r in rows]


async def holding(conn: asyncpg.Connection, channel: str) -> Freeze | None:
    """The freeze that holds `channel` (its own, else the fleet's), taking the create side of
    the lock: call it in the transaction that inserts the rollout."""
    await conn.execute("SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))", _LOCK)
    row = await conn.fetchrow(
        "SELECT channel, reason, frozen_by, frozen_at FROM fleet_freezes"
        " WHERE channel IN ($1, $2) ORDER BY channel = $2 LIMIT 1",
        channel,
        EVERY_CHANNEL,
    )
    return Freeze.model_validate(dict(row)) if row else None
