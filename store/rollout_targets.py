"""rollout_targets: the instances a rollout updates, fixed when it starts, in batch order.

Targets are the `active` instances of the channel below the release's version, not on hold,
seen within `stale_after_seconds` (INSTANCE_STALE_AFTER_SECONDS; 0: however long ago); or, for a
rollout created from a preview, exactly the previewed hosts; for a revert, the hosts it was made
with (store.reverts). The ones left out are
counted by reason on the rollout's row (`left_out`, shown in its view) and in its audit.

The snapshot is taken once per rollout: a retried activity finds it and answers from it, so a
host that registers meanwhile cannot shift the batches already counted by the workflow. It is
dropped in the write that records the rollout finished: nothing reads it after that, and a
rollout of 100,000 hosts would otherwise keep 100,000 rows for good. The drop and the snapshot
take one lock, so a rollout aborted while its snapshot is being stored leaves no rows behind.
"""

from collections.abc import Sequence

import asyncpg

from contract.wire import FINISHED_ROLLOUT_STATUSES
from store import audit, instances, reverts, rollouts
from store.rollouts import LeftOut

# Serialises snapshot attempts of one rollout (a timed-out attempt may still be running when its
# retry starts); the key space is shared with store.migrate's lock, hence the distinct prefix.
_LOCK_PREFIX = "rollout_targets:"


async def snapshot(
    conn: asyncpg.Connection,
    rollout_id: str,
    *,
    channel: str,
    versions: Sequence[str],
    stale_after_seconds: int = 0,
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
        if rollout is not None and rollout.revert_of is not None:
            # A revert: the hosts fixed when it was made, who it leaves out recorded then
            # (store.reverts).
            status = await conn.execute(reverts.SNAPSHOT, rollout_id)
            return int(status.rsplit(" ", 1)[1])
        if rollout is not None and rollout.preview_id is not None:
            # Created from a preview (which it matched): exactly the previewed hosts.
            status = await conn.execute(
                "INSERT INTO rollout_targets (rollout_id, position, instance_id)"
                " SELECT $1, t.position, t.instance_id FROM rollout_previews p,"
                " unnest(p.instance_ids) WITH ORDINALITY AS t (instance_id, position)"
                " WHERE p.id = $2",
                rollout_id,
                rollout.preview_id,
            )
        else:
            status = await conn.execute(
                "INSERT INTO rollout_targets (rollout_id, position, instance_id)"
                " SELECT $4, row_number() OVER (ORDER BY instance_id), instance_id FROM instances"
                f" WHERE {instances.TARGET_FILTER}",
                channel,
                list(versions),
                stale_after_seconds,
                rollout_id,
            )
        excluded = await instances.excluded_from_targets(
            conn, channel=channel, versions=versions, stale_after_seconds=stale_after_seconds
        )
        if excluded:
            await _record_left_out(conn, rollout_id, excluded, stale_after_seconds)
        return int(status.rsplit(" ", 1)[1])  # "INSERT 0 <rows>"


def _words(reason: str, stale_after_seconds: int) -> str:
    if reason == "not_seen":
        days, rest = divmod(stale_after_seconds, 86_400)
        if days and not rest:
            span = f"{days} day" + ("" if days == 1 else "s")
        else:
            span = f"{stale_after_seconds} s"
        return f"not seen for over {span} (INSTANCE_STALE_AFTER_SECONDS)"
    if reason == "pending":
        return "awaiting an admin's approval"
    if reason == "on_hold":
        return "on hold (POST /api/instances/{id}/hold)"
    return "decommissioned"


def left_out(excluded: Sequence[instances.Excluded], stale_after_seconds: int) -> list[LeftOut]:
    """The hosts a rollout leaves out, by reason, as its view and a preview show them."""
    return [
        LeftOut.model_validate(
            {
                "reason": e.reason,
                "description": _words(e.reason, stale_after_seconds),
                "count": e.total,
                "instances": e.first,
            }
        )
        for e in excluded
    ]


async def _record_left_out(
    conn: asyncpg.Connection,
    rollout_id: str,
    excluded: Sequence[instances.Excluded],
    stale_after_seconds: int,
) -> None:
    entries = left_out(excluded, stale_after_seconds)
    await rollouts.set_left_out(conn, rollout_id, entries)
    await audit.record(
        conn,
        actor="worker",
        action="rollout.targets_left_out",
        subject=f"rollout:{rollout_id}",
        detail={"leftOut": [entry.model_dump() for entry in entries]},
    )


async def append_late(
    conn: asyncpg.Connection,
    rollout_id: str,
    *,
    channel: str,
    versions: Sequence[str],
    stale_after_seconds: int,
) -> int:
    """Hosts that became targets since the snapshot (registered, moved to the channel, released
    from a hold, admitted) appended after the last target, in id order; returns the count now."""
    async with conn.transaction():
        await _lock(conn, rollout_id)
        await conn.execute(
            "INSERT INTO rollout_targets (rollout_id, position, instance_id)"
            " SELECT $4, (SELECT coalesce(max(position), 0) FROM rollout_targets"
            " WHERE rollout_id = $4) + row_number() OVER (ORDER BY instance_id), instance_id"
            f" FROM instances WHERE {instances.TARGET_FILTER} AND instance_id NOT IN"
            " (SELECT instance_id FROM rollout_targets WHERE rollout_id = $4)",
            channel,
            list(versions),
            stale_after_seconds,
            rollout_id,
        )
        return await count(conn, rollout_id)


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
