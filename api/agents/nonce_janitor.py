"""Deletes nonces whose signature window has passed, so the table stays the size of a window."""

import asyncio
import logging

import asyncpg

from api.errors import UNAVAILABLE_ERRORS, DatabaseOutage
from store import nonces

log = logging.getLogger(__name__)
INTERVAL_SECONDS = 60.0


async def sweep_forever(
    pool: asyncpg.Pool, outage: DatabaseOutage, interval: float = INTERVAL_SECONDS
) -> None:
    while True:
        try:
            await nonces.delete_expired(pool)
        except UNAVAILABLE_ERRORS as exc:
            outage.noted(exc)  # logged once for the whole outage, not once a sweep
        except asyncpg.PostgresError as exc:
            log.warning("nonce cleanup failed, will retry: %s", type(exc).__name__)
        await asyncio.sleep(interval)
