"""An agent poll's database work in one statement: claim the nonce, record the instance, find
its open job. Also what a held poll (api.agents.held_polls) needs: the notice that wakes it and the
re-checks it makes when woken.

Fleets poll all the time and most polls find nothing to do, so an idle poll is one round trip
and one commit. The statement spans agent_nonces, instances and update_jobs; each table's own
SQL stays in its module.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from contract.downgrade import RestoreMode
from store import nonces, releases
from store.instances import MAX_PENDING_INSTANCES
from store.statuses import OPEN_JOBS, WITHHOLDING_ROLLOUTS

# `last_seen_at` is rewritten at most this often while nothing else about the instance changes:
# a fleet polling every second would otherwise rewrite every instance row every second.
LAST_SEEN_RESOLUTION_SECONDS = 10

# Every API process LISTENs on this channel; the payload is a rollout id.
DISPATCH_CHANNEL = "rollout_dispatch"


def _handout_of(instance_id: str) -> str:
    """The instance's newest open job, whether it is handed out now, and its release, as a
    subquery over an SQL expression.

    The read model decides, not a query to the workflow: the worker writes a batch's rows only
    once the workflow released it, and a pause or abort only once the workflow took it (their
    answers wait for that write), so the rows say what the workflow hands out without asking
    it, which it answers slowly while it takes in a batch's reports. A job past its deadline is
    not handed out: the workflow times it out. The release comes with the job, so that a batch
    handed out to a thousand held polls at once is not a thousand lookups more."""
    return f"""
SELECT j.id AS job_id, j.rollout_id, j.deadline, r.revert_of IS NOT NULL AS revert,
        j.previous_version, r.restore, {releases.as_json("rel")} AS release,
        r.status NOT IN {WITHHOLDING_ROLLOUTS} AND NOT r.workflow_closed
            AND j.deadline > now() AS handed_out
    FROM (SELECT id, rollout_id, deadline, release_id, previous_version FROM update_jobs
            WHERE instance_id = {instance_id} AND status IN {OPEN_JOBS}
            ORDER BY created_at DESC, id LIMIT 1) j
        JOIN rollouts r ON r.id = j.rollout_id
        JOIN releases rel ON rel.id = coalesce(j.release_id, r.manifest_id)
"""


# Held polls woken together look again in one statement (api.agents.batchers).
_HANDOUTS = f"""
SELECT h.* FROM unnest($1::text[]) WITH ORDINALITY AS p(instance_id, n)
    LEFT JOIN LATERAL ({_handout_of("p.instance_id")}) h ON true
    ORDER BY p.n
"""

# Data-modifying CTEs run exactly once, whether or not the final SELECT reads them. An instance
# is recorded only from a poll whose nonce is fresh: a replayed request changes nothing. The
# polls come sorted by (instance, nonce), so two statements in flight lock rows in one order.
# A new instance is recorded in the state its poll was admitted as (`active`, or `pending` for
# an admin's approval, while fewer than MAX_PENDING_INSTANCES wait); a decommissioned one is not
# recorded at all. Only an `active` instance is handed a job; the state answered is the one the
# poll left (recorded) or found (the row as it was).
_POLLS = f"""
WITH polled AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[],
            $6::text[], $7::int[], $8::text[], $9::bool[])
        WITH ORDINALITY AS p(instance_id, nonce, expires_at, channel, current_version,
            agent_version, arrived, admit_as, accepts_downgrade, n)
), claimed AS ({nonces.claim_many("polled")}
), recorded AS (
    INSERT INTO instances AS i (instance_id, channel, current_version, agent_version, state,
            accepts_downgrade)
    SELECT DISTINCT ON (p.instance_id) p.instance_id, p.channel, p.current_version,
            p.agent_version, p.admit_as, p.accepts_downgrade
        FROM polled p JOIN claimed c USING (instance_id, nonce)
        WHERE p.admit_as = 'active'
            OR EXISTS (SELECT FROM instances k WHERE k.instance_id = p.instance_id)
            OR (SELECT count(*) FROM instances WHERE state = 'pending')
                < {MAX_PENDING_INSTANCES}
        ORDER BY p.instance_id, p.arrived DESC
    ON CONFLICT (instance_id) DO UPDATE SET channel = EXCLUDED.channel,
        current_version = EXCLUDED.current_version, agent_version = EXCLUDED.agent_version,
        accepts_downgrade = EXCLUDED.accepts_downgrade, last_seen_at = now()
    WHERE i.state <> 'decommissioned' AND (
        (i.channel, i.current_version, i.agent_version, i.accepts_downgrade)
            IS DISTINCT FROM (EXCLUDED.channel, EXCLUDED.current_version, EXCLUDED.agent_version,
                EXCLUDED.accepts_downgrade)
        OR i.last_seen_at < now() - interval '{LAST_SEEN_RESOLUTION_SECONDS} seconds')
    RETURNING instance_id, state
)
SELECT c.nonce IS NOT NULL AS fresh, COALESCE(r.state, k.state) AS state, h.*
    FROM polled p LEFT JOIN claimed c USING (instance_id, nonce)
        LEFT JOIN recorded r ON r.instance_id = p.instance_id
        LEFT JOIN instances k ON k.instance_id = p.instance_id
        LEFT JOIN LATERAL ({_handout_of("p.instance_id")}) h
            ON c.nonce IS NOT NULL AND COALESCE(r.state, k.state) = 'active'
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
    # The state a new instance is recorded in: `pending` when an admin must approve it first.
    admit_as: str = "active"
    # It declares the `downgrade` capability: a revert's jobs may be handed to it.
    accepts_downgrade: bool = False


@dataclass(frozen=True)
class Handout:
    """A job the instance may run now (PROTOCOL §5)."""

    job_id: str
    rollout_id: str
    release: releases.Release
    deadline: datetime
    # A fleet revert's job goes down from `previous_version`, with a permission (contract.
    # downgrade) that says whether the host restores data (`restore`: domain.reverts).
    revert: bool = False
    previous_version: str | None = None
    restore: RestoreMode | None = None


@dataclass(frozen=True)
class Found:
    """What the instance may run now: `handout`, or None; `withheld` when it has an open job that
    is not handed out (its rollout paused or finished, or the job past its deadline)."""

    handout: Handout | None = None
    withheld: bool = False


@dataclass(frozen=True)
class PollOutcome:
    # False: the nonce was already used by this instance, and nothing was written.
    fresh: bool
    found: Found = Found()
    # The instance's state after the poll (store.instances); None: not recorded (a new id
    # refused because MAX_PENDING_INSTANCES already wait). Only an `active` one gets a job.
    state: str | None = "active"


def _found(row: asyncpg.Record | None) -> Found:
    if row is None or row["job_id"] is None:
        return Found()
    if not row["handed_out"]:
        return Found(withheld=True)
    handout = Handout(
        job_id=row["job_id"],
        rollout_id=row["rollout_id"],
        release=releases.from_json(row["release"]),
        deadline=row["deadline"],
        revert=row["revert"],
        previous_version=row["previous_version"],
        restore=row["restore"],
    )
    return Found(handout=handout)


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
        [p.admit_as for p in polls],
        [p.accepts_downgrade for p in polls],
    )
    outcomes = [PollOutcome(fresh=False)] * len(many)
    for k, row in zip(unique, rows, strict=True):
        outcomes[k] = PollOutcome(fresh=row["fresh"], found=_found(row), state=row["state"])
    return outcomes


async def find_many(
    conn: asyncpg.Connection | asyncpg.Pool, instance_ids: Sequence[str]
) -> list[Found]:
    """What `record_many` finds, for held polls looking again after their nonces were claimed;
    in the order given."""
    return [_found(row) for row in await conn.fetch(_HANDOUTS, list(instance_ids))]


async def with_open_jobs(
    conn: asyncpg.Connection | asyncpg.Pool, instance_ids: Sequence[str], rollout_id: str | None
) -> list[str]:
    """Which of `instance_ids` have an open job (in `rollout_id`, or in any rollout when None):
    the held polls worth waking, found in one query however many are held."""
    rows = await conn.fetch(
        "SELECT DISTINCT instance_id FROM update_jobs"
        f" WHERE instance_id = ANY($1::text[]) AND status IN {OPEN_JOBS}"
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
