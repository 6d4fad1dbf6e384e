"""channel_windows: each channel's default maintenance window (domain.windows)."""

import asyncpg

from domain.windows import MaintenanceWindow


async def get(conn: asyncpg.Connection | asyncpg.Pool, channel: str) -> MaintenanceWindow | None:
    found = await conn.fetchval(
        "SELECT maintenance_window FROM channel_windows WHERE channel = $1", channel
    )
    return MaintenanceWindow.model_validate(found) if found is not None else None


async def put(
    conn: asyncpg.Connection | asyncpg.Pool, channel: str, window: MaintenanceWindow, actor: str
) -> None:
    await conn.execute(
        "INSERT INTO channel_windows (channel, maintenance_window, set_by) VALUES ($1, $2, $3)"
        " ON CONFLICT (channel) DO UPDATE SET maintenance_window = EXCLUDED.maintenance_window,"
        " set_by = EXCLUDED.set_by, set_at = now()",
        channel,
        window.model_dump(),
        actor,
    )


async def clear(conn: asyncpg.Connection | asyncpg.Pool, channel: str) -> bool:
    status = await conn.execute("DELETE FROM channel_windows WHERE channel = $1", channel)
    return status != "DELETE 0"
