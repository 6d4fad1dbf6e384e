"""Polls that arrive together are recorded together: one statement and one commit for many.

A fleet's polls are each one small statement (store.polls), and at thousands a second the
round trips and commits, not the work in them, are what PostgreSQL and the API spend. Polls
that arrive in one turn of the event loop, or while `MAX_IN_FLIGHT` statements are already
running, go out as one statement. Nothing waits for a batch to fill: a lone poll goes out at
the end of the loop turn it arrived in, as its own statement. Each poll still claims its
nonce in the shared table and is answered only after that commit, so replay protection across
API processes is what it was.
"""

import asyncio
from collections.abc import Sequence

import asyncpg
from prometheus_client import Histogram

from runtime.batches import answer_all
from store import polls

# Statements in flight at once; polls arriving meanwhile wait for the next one. Leaves most
# of the pool (api settings: db_pool_max_size) to reports, manifests and admin requests.
MAX_IN_FLIGHT = 2
# The most polls in one statement.
MAX_BATCH = 256

BATCH_SIZE = Histogram(
    "rollout_poll_batch_size",
    "Polls recorded by one statement",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)


class PollBatcher:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._waiting: list[tuple[polls.Poll, asyncio.Future[polls.PollOutcome]]] = []
        self._in_flight = 0
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def record(self, poll: polls.Poll) -> polls.PollOutcome:
        """The poll's outcome, once the statement that recorded it has committed."""
        outcome: asyncio.Future[polls.PollOutcome] = asyncio.get_running_loop().create_future()
        self._waiting.append((poll, outcome))
        self._schedule_flush()
        return await outcome  # cancelled (client gone): a statement under way still records it

    def _schedule_flush(self) -> None:
        if self._waiting and not self._flush_scheduled and self._in_flight < MAX_IN_FLIGHT:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
        if not batch:
            return
        self._in_flight += 1
        task = asyncio.create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self, batch: Sequence[tuple[polls.Poll, asyncio.Future[polls.PollOutcome]]]
    ) -> None:
        BATCH_SIZE.observe(len(batch))
        try:
            # every poll of the batch gets its outcome, or the statement's failure
            recorded = polls.record_many(self._pool, [poll for poll, _ in batch])
            await answer_all([outcome for _, outcome in batch], recorded)
        finally:
            self._in_flight -= 1
            self._schedule_flush()
