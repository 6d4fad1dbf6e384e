"""revert_targets: each host of a fleet revert and the release it goes back to (migration 0017);
and what a revert is made from: the hosts the reverted rollout touched, as they are now.

Written once, when the revert is created, in the transaction that stores its row, and kept: the
rollout's snapshot of targets is copied from it (store.rollout_targets) and each job's release
is read from it when the job's row is made (store.jobs.upsert_many).
"""

from collections.abc import Sequence

import asyncpg
from pydantic import BaseModel

from domain.reverts import RevertPlan, SkipReason, TouchedHost
from domain.rollouts import RolloutSpec
from store import audit, rollouts
from store.instances import LEFT_OUT_SHOWN
from store.rollouts import LeftOut, RevertTerms, Rollout
from store.statuses import OPEN_JOBS

# One row per host of the rollout: its first job says what it ran before, its latest whether it
# still runs and what it installed. What it runs now is what its last poll said, unless its
# newest job since (this rollout's, or a later one's on the channel: a revert) succeeded after
# that poll: a host polls its new version in only once its job has ended. The later rollouts'
# jobs are read through their rollout ids (a channel has few), by the by-rollout index.
_JOB_RELEASE = "JOIN releases r ON r.id = coalesce(j.release_id, ro.manifest_id)"
_TOUCHED = f"""
WITH latest AS (
    SELECT DISTINCT ON (j.instance_id) j.instance_id, j.status, r.version
        FROM update_jobs j JOIN rollouts ro ON ro.id = j.rollout_id {_JOB_RELEASE}
        WHERE j.rollout_id = $1 ORDER BY j.instance_id, j.attempt DESC
), newest AS (
    SELECT DISTINCT ON (j.instance_id) j.instance_id, j.status, j.updated_at, r.version
        FROM update_jobs j JOIN rollouts ro ON ro.id = j.rollout_id {_JOB_RELEASE}
        WHERE j.rollout_id IN (SELECT later.id FROM rollouts later, rollouts this
            WHERE this.id = $1 AND later.channel = this.channel
                AND later.created_at >= this.created_at)
            AND j.instance_id IN (SELECT instance_id FROM latest)
        ORDER BY j.instance_id, j.created_at DESC
)
SELECT f.instance_id, f.previous_version, f.previous_release_id,
        l.status IN {OPEN_JOBS} AS job_open, l.version AS job_version,
        CASE WHEN n.status = 'succeeded' AND i.last_seen_at <= n.updated_at THEN n.version
            ELSE i.current_version END AS running_version,
        i.channel, i.accepts_downgrade, i.state, i.held_at IS NOT NULL AS held, i.last_seen_at
    FROM (SELECT DISTINCT ON (instance_id) instance_id, previous_version, previous_release_id
            FROM update_jobs WHERE rollout_id = $1 ORDER BY instance_id, attempt) f
        JOIN latest l USING (instance_id)
        JOIN newest n USING (instance_id)
        JOIN instances i USING (instance_id)
    ORDER BY f.instance_id
"""


async def touched_hosts(
    conn: asyncpg.Connection | asyncpg.Pool, rollout_id: str
) -> list[TouchedHost]:
    rows = await conn.fetch(_TOUCHED, rollout_id)
    return [TouchedHost.model_validate(dict(r)) for r in rows]


async def insert(
    conn: asyncpg.Connection,
    rollout_id: str,
    targets: Sequence[tuple[str, str]],
) -> None:
    """(instance id, release id) of each host the revert takes back."""
    await conn.execute(
        "INSERT INTO revert_targets (rollout_id, instance_id, release_id)"
        " SELECT $1, t.instance_id, t.release_id"
        " FROM unnest($2::text[], $3::text[]) AS t (instance_id, release_id)",
        rollout_id,
        [instance_id for instance_id, _ in targets],
        [release_id for _, release_id in targets],
    )


class TargetRelease(BaseModel):
    """How many of a revert's hosts go back to one release (its preview)."""

    release_id: str
    version: str
    hosts: int


# The snapshot of a revert's targets (store.rollout_targets), in instance-id order. $1: the
# rollout.
SNAPSHOT = (
    "INSERT INTO rollout_targets (rollout_id, position, instance_id)"
    " SELECT $1, row_number() OVER (ORDER BY instance_id), instance_id FROM revert_targets"
    " WHERE rollout_id = $1"
)


_WORDS: dict[SkipReason, str] = {
    "still_running": "its job was still running: revert again once it has ended",
    "no_previous_release": "what it ran before was never uploaded as a release on the channel:"
    " not guessed",
    "agent_too_old": "its agent does not declare that it checks downgrade permissions (the"
    " `downgrade` capability, agents from 0.2.0): upgrade the agent",
    "other_channel": "moved to another channel since",
    "on_hold": "on hold (POST /api/instances/{id}/hold)",
    "pending": "awaiting an admin's approval",
    "decommissioned": "decommissioned",
    "not_seen": "not seen recently (INSTANCE_STALE_AFTER_SECONDS)",
}


def left_out(plan: RevertPlan) -> list[LeftOut]:
    """The hosts a revert leaves out, by reason, as its view and its preview show them."""
    return [
        LeftOut(
            reason=reason,
            description=_WORDS[reason],
            count=len(ids),
            instances=ids[:LEFT_OUT_SHOWN],
        )
        for reason, ids in sorted(plan.skipped.items())
    ]


async def create(
    conn: asyncpg.Connection,
    spec: RolloutSpec,
    *,
    reverted: Rollout,
    plan: RevertPlan,
    terms: RevertTerms,
    reason: str | None,
) -> None:
    """Store the revert `spec` of `reverted`, its hosts and who it leaves out, and audit both
    rollouts, in the caller's transaction; raises rollouts.ChannelBusy."""
    entries = left_out(plan)
    await rollouts.insert(conn, spec, revert=terms)
    await insert(conn, spec.id, plan.targets)
    await rollouts.set_left_out(conn, spec.id, entries)
    await rollouts.set_reverted_by(conn, reverted.id, spec.id)
    await audit.record(
        conn,
        actor=spec.created_by,
        action="rollout.reverted",
        subject=f"rollout:{reverted.id}",
        detail={
            "revertId": spec.id,
            "version": reverted.version,
            "targets": len(plan.targets),
            "leftOut": {entry.reason: entry.count for entry in entries},
            "restore": terms.restore,
            "restoreNote": terms.restore_note,
            "reason": reason,
        },
    )
    await audit.record(
        conn,
        actor=spec.created_by,
        action="rollout.created",
        subject=f"rollout:{spec.id}",
        detail=rollouts.created_detail(spec) | {"revertOf": reverted.id},
    )
