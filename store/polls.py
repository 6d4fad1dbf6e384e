"""An agent poll's database work in one statement: claim the nonce, record the instance, find
its open job. Also what a held poll (api.dispatch) needs: the notice that wakes it and the
re-checks it makes when woken.

Fleets poll all the time and most polls find nothing to do, so an idle poll is one round trip
and one commit. The statement spans agent_nonces, instances and update_jobs; each table's own
SQL stays in its module.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

# `last_seen_at` is rewritten at most this often while nothing else about the instance changes:
# a fleet polling every second would otherwise rewrite every instance row every second.
LAST_SEEN_RESOLUTION_SECONDS = 10

# Every API process LISTENs on this channel; the payload is a rollout id.
DISPATCH_CHANNEL = "rollout_dispatch"

_OPEN_ROLLOUT = """
SELECT rollout_id FROM update_jobs
    WHERE instance_id = $1 AND status IN ('pending', 'in_progress')
    ORDER BY created_at DESC, id LIMIT 1
"""

# Data-modifying CTEs run exactly once, whether or not the final SELECT reads them. The instance
# is recorded only when the nonce is fresh: a replayed request changes nothing.
_POLL = f"""
WITH claimed AS (
    INSERT INTO agent_nonces (instance_id, nonce, expires_at) VALUES ($1, $2, $3)
    ON CONFLICT DO NOTHING
    RETURNING 1
), recorded AS (
    INSERT INTO instances AS i (instance_id, channel, current_version, agent_version)
    SELECT $1::text, $4::text, $5::text, $6::text FROM claimed
    ON CONFLICT (instance_id) DO UPDATE SET channel = EXCLUDED.channel,
        current_version = EXCLUDED.current_version, agent_version = EXCLUDED.agent_version,
        last_seen_at = now()
    WHERE (i.channel, i.current_version, i.agent_version)
            IS DISTINCT FROM (EXCLUDED.channel, EXCLUDED.current_version, EXCLUDED.agent_version)
        OR i.last_seen_at < now() - interval '{LAST_SEEN_RESOLUTION_SECONDS} seconds'
)
SELECT EXISTS (SELECT FROM claimed) AS fresh,
    ({_OPEN_ROLLOUT}) AS open_rollout_id
"""


@dataclass(frozen=True)
class PollOutcome:
    # False: the nonce was already used by this instance, and nothing was written.
    fresh: bool
    # The rollout of the instance's newest pending or in-progress job, if any.
    open_rollout_id: str | None


async def record(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    instance_id: str,
    nonce: str,
    nonce_expires_at: datetime,
    channel: str,
    current_version: str,
    agent_version: str | None,
) -> PollOutcome:
    row = await conn.fetchrow(
        _POLL, instance_id, nonce, nonce_expires_at, channel, current_version, agent_version
    )
    assert row is not None  # a SELECT without FROM always answers one row
    return PollOutcome(fresh=row["fresh"], open_rollout_id=row["open_rollout_id"])


async def open_rollout(conn: asyncpg.Connection | asyncpg.Pool, instance_id: str) -> str | None:
    """What `record` finds, for a held poll re-checking after its nonce was claimed."""
    rollout_id: str | None = await conn.fetchval(_OPEN_ROLLOUT, instance_id)
    return rollout_id


async def with_open_jobs(
    conn: asyncpg.Connection | asyncpg.Pool, instance_ids: Sequence[str], rollout_id: str | None
) -> list[str]:
    """Which of `instance_ids` have an open job (in `rollout_id`, or in any rollout when None):
    the held polls worth waking, found in one query however many are held."""
    rows = await conn.fetch(
        "SELECT DISTINCT instance_id FROM update_jobs"
        " WHERE instance_id = ANY($1::text[]) AND status IN ('pending', 'in_progress')"
        " AND ($2::text IS NULL OR rollout_id = $2)",
        list(instance_ids),
        rollout_id,
    )
    return [r["instance_id"] for r in rows]


async def announce(conn: asyncpg.Connection | asyncpg.Pool, rollout_id: str) -> None:
    """Tell every API process that what `rollout_id` hands out may have changed.

    Sent inside the transaction that writes the change, so PostgreSQL delivers it at commit and
    only then: a woken poll always reads the change. Repeats in one transaction arrive once.
    """
    await conn.execute("SELECT pg_notify($1, $2)", DISPATCH_CHANNEL, rollout_id)
