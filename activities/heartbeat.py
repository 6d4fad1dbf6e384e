"""Heartbeats while an activity's statement runs, so a worker killed mid-activity costs the
rollout the activity's heartbeat timeout, not its start-to-close (workflows/activity_options.py).

The first heartbeat goes a third of the timeout after the start: a write that ends sooner, the
common case, sends none (no request to Temporal per write), and Temporal counts the heartbeat
timeout from the attempt's start until the first one arrives.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator

from temporalio import activity


async def _beat(every: float) -> None:
    while True:
        await asyncio.sleep(every)
        activity.heartbeat()


@contextlib.asynccontextmanager
async def heartbeating() -> AsyncIterator[None]:
    """Heartbeat every third of the activity's heartbeat timeout until the block ends; nothing
    when the workflow set none."""
    timeout = activity.info().heartbeat_timeout
    if not timeout:
        yield
        return
    beats = asyncio.create_task(_beat(timeout.total_seconds() / 3))
    try:
        yield
    finally:
        beats.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beats
