"""Deletes nonces whose signature window has passed, so the table stays the size of a window."""

import asyncio
import logging

import asyncpg

from store import nonces

log = logging.getLogger(__name__)
INTERVAL_SECONDS = 60.0


async def sweep_forever(pool: asyncpg.Pool, interval: float = INTERVAL_SECONDS) -> None:
    while True:
        try:
            await nonces.delete_expired(pool)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("nonce cleanup failed, will retry: %s", type(exc).__name__)
        await asyncio.sleep(interval)
