"""instances: the fleet registry that agent polls keep current and rollouts target."""

from datetime import datetime

import asyncpg
import semver
from pydantic import BaseModel

from contract.manifest import parse_version

_COLUMNS = "instance_id, channel, current_version, agent_version, first_seen_at, last_seen_at"


class Instance(BaseModel):
    instance_id: str
    channel: str
    current_version: str
    agent_version: str | None
    first_seen_at: datetime
    last_seen_at: datetime


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


async def list_all(
    conn: asyncpg.Connection | asyncpg.Pool, *, channel: str | None = None
) -> list[Instance]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM instances WHERE ($1::text IS NULL OR channel = $1)"
        " ORDER BY instance_id",
        channel,
    )
    return [Instance(**dict(r)) for r in rows]


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
