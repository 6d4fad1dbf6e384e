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


def _open_rollout_of(instance_id: str) -> str:
    """The rollout of the instance's newest open job, as a subquery over an SQL expression."""
    return f"""
SELECT rollout_id FROM update_jobs
    WHERE instance_id = {instance_id} AND status IN ('pending', 'in_progress')
    ORDER BY created_at DESC, id LIMIT 1
"""


_OPEN_ROLLOUT = _open_rollout_of("$1")

# Data-modifying CTEs run exactly once, whether or not the final SELECT reads them. An instance
# is recorded only from a poll whose nonce is fresh: a replayed request changes nothing. The
# polls come sorted by (instance, nonce), so two statements in flight lock rows in one order.
_POLLS = f"""
WITH polled AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[],
            $6::text[], $7::int[])
        WITH ORDINALITY AS p(instance_id, nonce, expires_at, channel, current_version,
            agent_version, arrived, n)
), claimed AS (
    INSERT INTO agent_nonces (instance_id, nonce, expires_at)
    SELECT instance_id, nonce, expires_at FROM polled ORDER BY n
    ON CONFLICT DO NOTHING
    RETURNING instance_id, nonce
), recorded AS (
    INSERT INTO instances AS i (instance_id, channel, current_version, agent_version)
    SELECT DISTINCT ON (p.instance_id) p.instance_id, p.channel, p.current_version,
            p.agent_version
        FROM polled p JOIN claimed c USING (instance_id, nonce)
        ORDER BY p.instance_id, p.arrived DESC
    ON CONFLICT (instance_id) DO UPDATE SET channel = EXCLUDED.channel,
        current_version = EXCLUDED.current_version, agent_version = EXCLUDED.agent_version,
        last_seen_at = now()
    WHERE (i.channel, i.current_version, i.agent_version)
            IS DISTINCT FROM (EXCLUDED.channel, EXCLUDED.current_version, EXCLUDED.agent_version)
        OR i.last_seen_at < now() - interval '{LAST_SEEN_RESOLUTION_SECONDS} seconds'
)
SELECT c.nonce IS NOT NULL AS fresh,
    ({_open_rollout_of("p.instance_id")}) AS open_rollout_id
    FROM polled p LEFT JOIN claimed c USING (instance_id, nonce)
    ORDER BY p.n
"""


@dataclass(frozen=True)
class Poll:
    """What a poll records: its nonce and what the instance says of itself."""

    instance_id: str
    nonce: str
    nonce_expires_at: datetime
    channel: str
    current_version: str
    agent_version: str | None


@dataclass(frozen=True)
class PollOutcome:
    # False: the nonce was already used by this instance, and nothing was written.
    fresh: bool
    # The rollout of the instance's newest pending or in-progress job, if any.
    open_rollout_id: str | None


async def record_many(
    conn: asyncpg.Connection | asyncpg.Pool, many: Sequence[Poll]
) -> list[PollOutcome]:
    """Record polls in one statement and one commit; the outcomes come in the order given.

    A nonce given twice is claimed by its first poll; the others are replays. An instance
    polling twice with fresh nonces is recorded as its later poll says.
    """
    first: dict[tuple[str, str], int] = {}  # (instance, nonce) -> index of its first poll
    for k, poll in enumerate(many):
        first.setdefault((poll.instance_id, poll.nonce), k)
    unique = sorted(first.values(), key=lambda k: (many[k].instance_id, many[k].nonce))
    polls = [many[k] for k in unique]
    rows = await conn.fetch(
        _POLLS,
        [p.instance_id for p in polls],
        [p.nonce for p in polls],
        [p.nonce_expires_at for p in polls],
        [p.channel for p in polls],
        [p.current_version for p in polls],
        [p.agent_version for p in polls],
        unique,
    )
    outcomes = [PollOutcome(fresh=False, open_rollout_id=None)] * len(many)
    for k, row in zip(unique, rows, strict=True):
        outcomes[k] = PollOutcome(fresh=row["fresh"], open_rollout_id=row["open_rollout_id"])
    return outcomes


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
