"""rollout_previews: a preview's targets, in batch order, for a rollout created from it."""

from typing import NamedTuple

import asyncpg

# A preview older than this cannot be created from: its hosts would be a day old.
KEPT_SECONDS = 86_400


async def insert(
    conn: asyncpg.Connection | asyncpg.Pool,
    preview_id: str,
    *,
    release_id: str,
    channel: str,
    instance_ids: list[str],
) -> None:
    """Stores the preview, and drops those past their day (few: one per preview asked for)."""
    await conn.execute(
        "WITH expired AS (DELETE FROM rollout_previews"
        " WHERE created_at < now() - make_interval(secs => $5))"
        " INSERT INTO rollout_previews (id, release_id, channel, instance_ids)"
        " VALUES ($1, $2, $3, $4)",
        preview_id,
        release_id,
        channel,
        instance_ids,
        KEPT_SECONDS,
    )


class Preview(NamedTuple):
    release_id: str
    channel: str
    instance_ids: list[str]


async def get(conn: asyncpg.Connection | asyncpg.Pool, preview_id: str) -> Preview | None:
    """The preview, unless unknown or past its day."""
    row = await conn.fetchrow(
        "SELECT release_id, channel, instance_ids FROM rollout_previews"
        " WHERE id = $1 AND created_at >= now() - make_interval(secs => $2)",
        preview_id,
        KEPT_SECONDS,
    )
    if row is None:
        return None
    return Preview(row["release_id"], row["channel"], list(row["instance_ids"]))
