"""rollout_targets: the instances a rollout updates, fixed when it starts, in batch order.

The snapshot is taken once per rollout: a retried activity finds it and answers from it, so a
host that registers meanwhile cannot shift the batches already counted by the workflow.
"""

from collections.abc import Sequence

import asyncpg

# Serialises snapshot attempts of one rollout (a timed-out attempt may still be running when its
# retry starts); the key space is shared with store.migrate's lock, hence the distinct prefix.
_LOCK_PREFIX = "rollout_targets:"


async def snapshot(conn: asyncpg.Connection, rollout_id: str, instance_ids: Sequence[str]) -> int:
    """Store `instance_ids` as the rollout's targets unless it has them already; returns how
    many targets the rollout has. Runs in one transaction on `conn`."""
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", _LOCK_PREFIX + rollout_id
        )
        taken = await count(conn, rollout_id)
        if taken:
            return taken
        await conn.execute(
            "INSERT INTO rollout_targets (rollout_id, position, instance_id)"
            " SELECT $1, t.position, t.instance_id"
            " FROM unnest($2::text[]) WITH ORDINALITY AS t(instance_id, position)",
            rollout_id,
            list(instance_ids),
        )
        return len(instance_ids)


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
