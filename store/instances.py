"""instances: the fleet registry that agent polls keep current and rollouts target, and the
lifecycle an operator gives each instance (migration 0008): `active`, `pending` (first seen with
the fleet-wide token while approval is required), `decommissioned`. Polls record instances in
store.polls; rollouts take their targets in store.rollout_targets."""

from collections.abc import Sequence
from datetime import datetime
from typing import Literal, NamedTuple

import asyncpg
import semver
from pydantic import BaseModel

from contract.manifest import parse_version

_COLUMNS = (
    "instance_id, channel, current_version, agent_version, first_seen_at, last_seen_at, state,"
    " state_changed_at, held_at, hold_reason, held_by, accepts_downgrade"
)

InstanceState = Literal["active", "pending", "decommissioned"]
# At most this many instances wait for approval at once: past it a new id polling with the
# fleet-wide token is refused and not recorded, so invented ids cannot grow the registry.
MAX_PENDING_INSTANCES = 1_000


class Instance(BaseModel):
    instance_id: str
    channel: str
    current_version: str
    agent_version: str | None
    first_seen_at: datetime
    last_seen_at: datetime
    state: InstanceState
    state_changed_at: datetime | None
    # On hold (migration 0009): left out of new rollouts' targets until released.
    held_at: datetime | None = None
    hold_reason: str | None = None
    held_by: str | None = None
    # Its agent declares the `downgrade` capability (docs/protocol.md): it may take revert jobs.
    accepts_downgrade: bool = False


def _instance(row: asyncpg.Record) -> Instance:
    return Instance.model_validate(dict(row))


async def record_poll(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    instance_id: str,
    channel: str,
    current_version: str,
    agent_version: str | None,
) -> None:
    await conn.execute(
        "INSERT INTO instances (instance_id, channel, current_version, agent_version)"
        " VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (instance_id) DO UPDATE SET channel = EXCLUDED.channel,"
        " current_version = EXCLUDED.current_version, agent_version = EXCLUDED.agent_version,"
        " last_seen_at = now()",
        instance_id,
        channel,
        current_version,
        agent_version,
    )


class Page(NamedTuple):
    instances: list[Instance]
    total: int  # every instance the filters match, whatever the page


# The listing's filters, $1 to $4: channel, state, current version, not seen for N seconds.
_FILTERED = (
    " FROM instances"
    " WHERE ($1::text IS NULL OR channel = $1) AND ($2::text IS NULL OR state = $2)"
    " AND ($3::text IS NULL OR current_version = $3)"
    " AND ($4::int IS NULL OR last_seen_at < now() - make_interval(secs => $4))"
)


async def list_page(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    channel: str | None = None,
    state: str | None = None,
    version: str | None = None,
    not_seen_for_seconds: int | None = None,
    limit: int = 500,
    offset: int = 0,
) -> Page:
    """A page of the instances the filters match, in instance-id order, and how many match."""
    filters = (channel, state, version, not_seen_for_seconds)
    rows = await conn.fetch(
        f"SELECT {_COLUMNS}, count(*) OVER () AS total{_FILTERED}"
        " ORDER BY instance_id LIMIT $5 OFFSET $6",
        *filters,
        limit,
        offset,
    )
    if rows:
        return Page([_instance(r) for r in rows], rows[0]["total"])
    # An empty page (none match, or past the end): the count alone.
    return Page([], await conn.fetchval(f"SELECT count(*){_FILTERED}", *filters))


async def get(conn: asyncpg.Connection | asyncpg.Pool, instance_id: str) -> Instance | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM instances WHERE instance_id = $1", instance_id
    )
    return _instance(row) if row else None


async def set_state(
    conn: asyncpg.Connection | asyncpg.Pool, instance_id: str, state: InstanceState
) -> Instance | None:
    """Move the instance to `state`; None when it is there already (or unknown)."""
    row = await conn.fetchrow(
        "UPDATE instances SET state = $2, state_changed_at = now()"
        f" WHERE instance_id = $1 AND state <> $2 RETURNING {_COLUMNS}",
        instance_id,
        state,
    )
    return _instance(row) if row else None


async def hold(
    conn: asyncpg.Connection | asyncpg.Pool, instance_id: str, *, reason: str, actor: str
) -> Instance | None:
    """Hold the instance (or change the reason of its hold); None when unknown."""
    row = await conn.fetchrow(
        "UPDATE instances SET held_at = coalesce(held_at, now()), hold_reason = $2, held_by = $3"
        f" WHERE instance_id = $1 RETURNING {_COLUMNS}",
        instance_id,
        reason,
        actor,
    )
    return _instance(row) if row else None


async def release_hold(
    conn: asyncpg.Connection | asyncpg.Pool, instance_id: str
) -> Instance | None:
    """Release the instance's hold; None when it has none (or is unknown)."""
    row = await conn.fetchrow(
        "UPDATE instances SET held_at = NULL, hold_reason = NULL, held_by = NULL"
        f" WHERE instance_id = $1 AND held_at IS NOT NULL RETURNING {_COLUMNS}",
        instance_id,
    )
    return _instance(row) if row else None


# A rollout's targets among the instances of channel $1 at one of the versions $2, when hosts not
# seen for $3 seconds are left out (0: none is): `active`, not on hold, seen recently enough.
# store.rollout_targets snapshots them, the preview reads them; `excluded_from_targets` is the
# complement, with each one's reason.
TARGET_FILTER = (
    "channel = $1 AND current_version = ANY($2::text[]) AND state = 'active' AND held_at IS NULL"
    " AND ($3::int = 0 OR last_seen_at >= now() - make_interval(secs => $3))"
)


async def targets(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    channel: str,
    versions: Sequence[str],
    stale_after_seconds: int,
) -> list[str]:
    """The ids a rollout started now would target, in batch order (instance id)."""
    rows = await conn.fetch(
        f"SELECT instance_id FROM instances WHERE {TARGET_FILTER} ORDER BY instance_id",
        channel,
        list(versions),
        stale_after_seconds,
    )
    return [r["instance_id"] for r in rows]


async def count_on_channel(conn: asyncpg.Connection | asyncpg.Pool, channel: str) -> int:
    return await conn.fetchval("SELECT count(*) FROM instances WHERE channel = $1", channel)


async def versions_below(
    conn: asyncpg.Connection | asyncpg.Pool, *, channel: str, version: str
) -> list[str]:
    """The distinct versions on `channel` lower than `version` (semver): a fleet runs a few, so
    a rollout's targets are selected in SQL by these instead of row by row in Python."""
    target = parse_version(version)
    rows = await conn.fetch(
        "SELECT DISTINCT current_version FROM instances WHERE channel = $1", channel
    )
    return [r["current_version"] for r in rows if _below(r["current_version"], target)]


def _below(current: str, target: semver.Version) -> bool:
    try:
        return semver.Version.parse(current) < target
    except ValueError:
        return False  # an unparseable version was never recorded by a poll; skip it safely


# How many ids of each reason a rollout keeps of the hosts it left out (the count is exact).
LEFT_OUT_SHOWN = 10


class Excluded(NamedTuple):
    reason: str  # `not_seen`, `on_hold`, or the instance's state: `pending`, `decommissioned`
    total: int
    first: list[str]  # up to LEFT_OUT_SHOWN ids, in id order


async def excluded_from_targets(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    channel: str,
    versions: Sequence[str],
    stale_after_seconds: int,
) -> list[Excluded]:
    """The instances on `channel` at one of `versions` that a rollout does not target: those
    not `active`, those on hold, and those whose last poll is older than `stale_after_seconds`
    (0: none is). The complement of TARGET_FILTER, in the same transaction."""
    rows = await conn.fetch(
        "SELECT reason, count(*) AS n,"
        f" (array_agg(instance_id ORDER BY instance_id))[1:{LEFT_OUT_SHOWN}] AS first FROM ("
        " SELECT instance_id, CASE WHEN state <> 'active' THEN state"
        " WHEN held_at IS NOT NULL THEN 'on_hold' ELSE 'not_seen' END AS reason"
        " FROM instances WHERE channel = $1 AND current_version = ANY($2::text[])"
        f" AND NOT ({TARGET_FILTER})"
        ") AS s GROUP BY reason ORDER BY reason",
        channel,
        list(versions),
        stale_after_seconds,
    )
    return [Excluded(r["reason"], r["n"], list(r["first"])) for r in rows]
