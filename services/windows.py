"""A channel's default maintenance window: set, read and cleared by an admin (audited), and taken
by every rollout created on the channel without a window of its own (services/rollouts.py). A
change reaches rollouts created after it, not those running: each carries its window."""

import asyncpg

from domain.windows import MaintenanceWindow
from services.errors import NotFound
from store import audit, channel_windows


async def get(pool: asyncpg.Pool, channel: str) -> MaintenanceWindow:
    window = await channel_windows.get(pool, channel)
    if window is None:
        raise NotFound(f"channel {channel} has no default maintenance window")
    return window


async def put(
    pool: asyncpg.Pool, channel: str, window: MaintenanceWindow, *, actor: str
) -> MaintenanceWindow:
    async with pool.acquire() as conn, conn.transaction():
        await channel_windows.put(conn, channel, window, actor)
        await audit.record(
            conn,
            actor=actor,
            action="channel.window_set",
            subject=f"channel:{channel}",
            detail=window.model_dump(),
        )
    return window


async def clear(pool: asyncpg.Pool, channel: str, *, actor: str) -> None:
    async with pool.acquire() as conn, conn.transaction():
        if await channel_windows.clear(conn, channel):
            await audit.record(
                conn, actor=actor, action="channel.window_cleared", subject=f"channel:{channel}"
            )
