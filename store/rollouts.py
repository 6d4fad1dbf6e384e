"""rollouts: the read model of each rollout workflow, and the one-unfinished-per-channel rule."""

from datetime import datetime
from typing import Any, Literal, cast

import asyncpg
from pydantic import BaseModel

from contract.downgrade import RestoreMode
from contract.wire import RolloutStatus
from domain.reverts import SkipReason
from domain.rollouts import RolloutProgress, RolloutSnapshot, RolloutSpec, rollout_workflow_id
from store.statuses import FINISHED_ROLLOUTS

_COLUMNS = (
    "id, workflow_id, manifest_id, version, channel, batch_size, auto_advance, bake_seconds,"
    " max_failures, max_unreachable, job_timeout_seconds, created_by, status, paused_reason,"
    " current_batch, total_batches, target_count, details, revision, workflow_closed, created_at,"
    ' updated_at, finished_at, left_out, plan, preview_id, maintenance_window AS "window",'
    " include_late_joiners, gates, gate_interval_seconds, revert_of, reverted_by, restore,"
    " restore_note, freeze_override, auto_revert, auto_revert_restore"
)


class LeftOut(BaseModel):
    """Hosts of the channel below the release's version that the rollout did not take as
    targets when it started, for one reason (store.rollout_targets)."""

    reason: Literal["not_seen", "on_hold", "pending", "decommissioned"] | SkipReason
    description: str  # the reason in words: "not seen for over 7 days"
    count: int
    instances: list[str]  # the first few ids, in id order


class Rollout(RolloutSnapshot, RolloutSpec):
    """A row: the spec and the latest snapshot written."""

    workflow_id: str
    revision: int
    workflow_closed: bool
    created_at: datetime
    updated_at: datetime
    left_out: list[LeftOut] = []
    preview_id: str | None = None  # created from this preview: its targets are the previewed
    reverted_by: str | None = None  # the rollout taking this one's hosts back (a revert)
    # A revert's (RevertTerms): how data comes back, and the reason it runs through freezes.
    restore: RestoreMode | None = None
    restore_note: str | None = None
    freeze_override: str | None = None


class RevertTerms(BaseModel):
    """What an operator said when asking for a revert, stored on its row."""

    restore: RestoreMode | None = None
    restore_note: str | None = None
    freeze_override: str | None = None  # set: a fleet freeze does not hold the revert


class ChannelBusy(Exception):
    """Another rollout on the channel is unfinished."""

    def __init__(self, channel: str, rollout_id: str | None) -> None:
        super().__init__(f"rollout {rollout_id} on channel {channel} is not finished")
        self.channel = channel
        self.rollout_id = rollout_id


def _rollout(row: asyncpg.Record) -> Rollout:
    return Rollout.model_validate(dict(row))


async def insert(
    conn: asyncpg.Connection | asyncpg.Pool,
    spec: RolloutSpec,
    *,
    preview_id: str | None = None,
    revert: RevertTerms | None = None,
) -> Rollout:
    """Insert as `running`, or raise ChannelBusy: the partial unique index lets only one of
    several concurrent inserts on a channel through."""
    row = await conn.fetchrow(
        "INSERT INTO rollouts (id, workflow_id, manifest_id, version, channel, batch_size,"
        " auto_advance, bake_seconds, max_failures, max_unreachable, job_timeout_seconds,"
        " created_by, status, plan, preview_id, maintenance_window, include_late_joiners, gates,"
        " gate_interval_seconds, revert_of, restore, restore_note, freeze_override, auto_revert,"
        " auto_revert_restore) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,"
        " 'running', $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24)"
        f" ON CONFLICT (channel) WHERE status NOT IN {FINISHED_ROLLOUTS} DO NOTHING"
        f" RETURNING {_COLUMNS}",
        spec.id,
        rollout_workflow_id(spec.id),
        spec.manifest_id,
        spec.version,
        spec.channel,
        spec.batch_size,
        spec.auto_advance,
        spec.bake_seconds,
        spec.max_failures,
        spec.max_unreachable,
        spec.job_timeout_seconds,
        spec.created_by,
        spec.plan.model_dump() if spec.plan else None,
        preview_id,
        spec.window.model_dump() if spec.window else None,
        spec.include_late_joiners,
        [gate.model_dump(mode="json") for gate in spec.gates],
        spec.gate_interval_seconds,
        spec.revert_of,
        revert.restore if revert else None,
        revert.restore_note if revert else None,
        revert.freeze_override if revert else None,
        spec.auto_revert,
        spec.auto_revert_restore,
    )
    if row is None:
        busy = await conn.fetchval(
            f"SELECT id FROM rollouts WHERE channel = $1 AND status NOT IN {FINISHED_ROLLOUTS}",
            spec.channel,
        )
        raise ChannelBusy(spec.channel, busy)
    return _rollout(row)


def created_detail(spec: RolloutSpec) -> dict[str, Any]:
    """What the audit's `rollout.created` records of a rollout."""
    return {
        "version": spec.version,
        "channel": spec.channel,
        "batchSize": spec.batch_size,
        "batchPlan": spec.plan.model_dump(exclude_defaults=True) if spec.plan else None,
    }


async def set_reverted_by(conn: asyncpg.Connection, rollout_id: str, revert_id: str) -> None:
    await conn.execute("UPDATE rollouts SET reverted_by = $2 WHERE id = $1", rollout_id, revert_id)


async def delete_unstarted(conn: asyncpg.Connection | asyncpg.Pool, rollout_id: str) -> None:
    """Undo an insert whose workflow could not be started (no job can reference it yet); the
    rollout it was to revert is no longer reverted by it (ON DELETE SET NULL)."""
    await conn.execute(
        "DELETE FROM rollouts WHERE id = $1 AND revision = 0 AND NOT EXISTS"
        " (SELECT 1 FROM update_jobs WHERE rollout_id = $1)",
        rollout_id,
    )


async def record_progress(
    conn: asyncpg.Connection | asyncpg.Pool, progress: RolloutProgress
) -> str | None:
    """Write a newer revision; the status it replaced, or None when this revision (or a later
    one) is already there. (`was` reads the row as the statement found it: with FOR UPDATE it
    would find the row this statement changed, and nothing.)"""
    return cast(
        str | None,
        await conn.fetchval(
            "WITH was AS (SELECT status FROM rollouts WHERE id = $1)"
            " UPDATE rollouts SET status = $2, paused_reason = $3, current_batch = $4,"
            " total_batches = $5, target_count = $6, details = $7, finished_at = $8,"
            " workflow_closed = $9, revision = $10, updated_at = now()"
            " WHERE id = $1 AND revision < $10 RETURNING (SELECT status FROM was)",
            progress.id,
            progress.status,
            progress.paused_reason,
            progress.current_batch,
            progress.total_batches,
            progress.target_count,
            progress.details,
            progress.finished_at,
            progress.workflow_closed,
            progress.revision,
        ),
    )


async def with_open_workflow(conn: asyncpg.Connection | asyncpg.Pool) -> list[tuple[str, str]]:
    """(id, workflow_id) of every rollout whose workflow has not written its final state."""
    rows = await conn.fetch(
        "SELECT id, workflow_id FROM rollouts WHERE NOT workflow_closed ORDER BY created_at, id"
    )
    return [(r["id"], r["workflow_id"]) for r in rows]


async def end_closed_workflow(conn: asyncpg.Connection, rollout_id: str) -> Rollout | None:
    """Record that the workflow closed without writing its final state (terminated, ...):
    an unfinished rollout becomes `aborted`, freeing its channel. Guarded by
    `workflow_closed`, so of several reconcilers only one applies it; the revision moves on, so
    no late write of the closed run can undo it. The row as recorded; None when it was already
    recorded. Its details are the caller's to write (`set_details`), once its jobs are ended."""
    row = await conn.fetchrow(
        "UPDATE rollouts SET"
        f" status = CASE WHEN status IN {FINISHED_ROLLOUTS} THEN status ELSE 'aborted' END,"
        " paused_reason = NULL,"
        " finished_at = COALESCE(finished_at, now()), workflow_closed = true,"
        " revision = revision + 1, updated_at = now()"
        f" WHERE id = $1 AND NOT workflow_closed RETURNING {_COLUMNS}",
        rollout_id,
    )
    return _rollout(row) if row else None


async def set_details(conn: asyncpg.Connection, rollout_id: str, details: str) -> None:
    await conn.execute("UPDATE rollouts SET details = $2 WHERE id = $1", rollout_id, details)


async def set_left_out(
    conn: asyncpg.Connection | asyncpg.Pool, rollout_id: str, left_out: list[LeftOut]
) -> None:
    await conn.execute(
        "UPDATE rollouts SET left_out = $2 WHERE id = $1",
        rollout_id,
        [entry.model_dump() for entry in left_out],
    )


async def get(
    conn: asyncpg.Connection | asyncpg.Pool, rollout_id: str, *, for_update: bool = False
) -> Rollout | None:
    """`for_update`: the row locked until the caller's transaction ends."""
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM rollouts WHERE id = $1{lock}", rollout_id)
    return _rollout(row) if row else None


async def list_all(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    channel: str | None = None,
    status: RolloutStatus | None = None,
) -> list[Rollout]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM rollouts"
        " WHERE ($1::text IS NULL OR channel = $1) AND ($2::text IS NULL OR status = $2)"
        " ORDER BY created_at DESC, id",
        channel,
        status,
    )
    return [_rollout(r) for r in rows]


async def freezable(
    conn: asyncpg.Connection | asyncpg.Pool, channel: str | None = None
) -> list[tuple[str, str]]:
    """(id, channel) of the rollouts whose workflow still runs, on `channel` or every one, that
    a fleet freeze holds: all but reverts created with a freeze override."""
    rows = await conn.fetch(
        "SELECT id, channel FROM rollouts WHERE NOT workflow_closed AND freeze_override IS NULL"
        f" AND status NOT IN {FINISHED_ROLLOUTS} AND ($1::text IS NULL OR channel = $1)"
        " ORDER BY created_at",
        channel,
    )
    return [(r["id"], r["channel"]) for r in rows]


async def count_by_status(conn: asyncpg.Connection | asyncpg.Pool) -> dict[str, int]:
    rows = await conn.fetch("SELECT status, count(*) AS n FROM rollouts GROUP BY status")
    return {r["status"]: r["n"] for r in rows}
