"""rollout_targets: the instances a rollout updates, fixed when it starts, in batch order.

The snapshot is taken once per rollout: a retried activity finds it and answers from it, so a
host that registers meanwhile cannot shift the batches already counted by the workflow. It is
dropped in the write that records the rollout finished: nothing reads it after that, and a
rollout of 100,000 hosts would otherwise keep 100,000 rows for good. The drop and the snapshot
take one lock, so a rollout aborted while its snapshot is being stored leaves no rows behind.
"""

from collections.abc import Sequence

import asyncpg

from contract.wire import FINISHED_ROLLOUT_STATUSES
from store import rollouts

# Serialises snapshot attempts of one rollout (a timed-out attempt may still be running when its
# retry starts); the key space is shared with store.migrate's lock, hence the distinct prefix.
_LOCK_PREFIX = "rollout_targets:"


async def snapshot(
    conn: asyncpg.Connection, rollout_id: str, *, channel: str, versions: Sequence[str]
) -> int:
    """Store the instances on `channel` at one of `versions` as the rollout's targets, in
    instance-id order, unless it has them already; returns how many targets the rollout has.
    Runs in one transaction on `conn`; the ids never leave PostgreSQL."""
    async with conn.transaction():
        await _lock(conn, rollout_id)
        taken = await count(conn, rollout_id)
        if taken:
            return taken
        rollout = await rollouts.get(conn, rollout_id)
        if rollout is not None and rollout.status in FINISHED_ROLLOUT_STATUSES:
            return 0  # an attempt still running when the rollout ended: it was dropped already
        status = await conn.execute(
            "INSERT INTO rollout_targets (rollout_id, position, instance_id)"
            " SELECT $1, row_number() OVER (ORDER BY instance_id), instance_id FROM instances"
            " WHERE channel = $2 AND current_version = ANY($3::text[])",
            rollout_id,
            channel,
            list(versions),
        )
        return int(status.rsplit(" ", 1)[1])  # "INSERT 0 <rows>"


async def count(conn: asyncpg.Connection | asyncpg.Pool, rollout_id: str) -> int:
    """Positions run 1..n without gaps, so the last one is the count (read off the index)."""
    return await conn.fetchval(
        "SELECT coalesce(max(position), 0) FROM rollout_targets WHERE rollout_id = $1", rollout_id
    )


async def slice_of(
    conn: asyncpg.Connection | asyncpg.Pool, rollout_id: str, *, start: int, limit: int
) -> list[str]:
    """Instance ids at positions start+1 .. start+limit (a batch), in order."""
    rows = await conn.fetch(
        "SELECT instance_id FROM rollout_targets"
        " WHERE rollout_id = $1 AND position > $2 AND position <= $2 + $3 ORDER BY position",
        rollout_id,
        start,
        limit,
    )
    return [r["instance_id"] for r in rows]


async def drop(conn: asyncpg.Connection, rollout_id: str) -> None:
    """The finished rollout's targets: its jobs and audit keep what happened to each host. Run
    in the transaction that records the end: a snapshot being stored meanwhile commits first and
    goes with the rest."""
    await _lock(conn, rollout_id)
    await conn.execute("DELETE FROM rollout_targets WHERE rollout_id = $1", rollout_id)


async def _lock(conn: asyncpg.Connection, rollout_id: str) -> None:
    """Held until the caller's transaction ends."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", _LOCK_PREFIX + rollout_id
    )
