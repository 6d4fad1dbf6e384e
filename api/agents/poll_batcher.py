"""Polls that arrive together are recorded together: one statement and one commit for many.

A fleet's polls are each one small statement (store.polls), and at thousands a second the
round trips and commits, not the work in them, are what PostgreSQL and the API spend: a
statement of one poll costs about twenty times as much per poll as one of sixty-four. Polls that
arrive in one turn of the event loop, or while `MAX_IN_FLIGHT` statements are already running,
go out as one statement. A poll whose agent would be answered at once goes out at the end of
the loop turn it arrived in. A poll that will be held when it finds nothing is patient: its
agent waits for the hold anyway, so it waits up to `GATHER_SECONDS` for others to share its
statement, which keeps a fleet whose holds run out at different moments (a steady trickle of
polls, not waves) from costing a statement each. Each poll still claims its nonce in the shared
table and is answered only after that commit, so replay protection across API processes is
what it was.
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
# The longest a patient poll waits for others before its statement goes out: a handout found
# by it is this much later, which a host about to be held does not notice.
GATHER_SECONDS = 0.05

BATCH_SIZE = Histogram(
    "rollout_poll_batch_size",
    "Polls recorded by one statement",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)


class PollBatcher:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._waiting: list[tuple[polls.Poll, asyncio.Future[polls.PollOutcome]]] = []
        # When the waiting polls go out at the latest (loop time); None while none wait.
        self._due: float | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._flush_at = 0.0
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def record(self, poll: polls.Poll, *, patient: bool = False) -> polls.PollOutcome:
        """The poll's outcome, once the statement that recorded it has committed. `patient`:
        it may wait up to GATHER_SECONDS for company."""
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[polls.PollOutcome] = loop.create_future()
        self._waiting.append((poll, outcome))
        now = loop.time()
        due = now if not patient or len(self._waiting) >= MAX_BATCH else now + GATHER_SECONDS
        if self._due is None or due < self._due:
            self._due = due
        self._schedule_flush()
        return await outcome  # cancelled (client gone): a statement under way still records it

    def _schedule_flush(self) -> None:
        if self._due is None or self._in_flight >= MAX_IN_FLIGHT:
            return
        if self._flush_handle is not None:
            if self._flush_at <= self._due:
                return
            self._flush_handle.cancel()  # an impatient poll came: sooner than the gathering
        loop = asyncio.get_running_loop()
        self._flush_at = self._due
        if self._due <= loop.time():  # at the end of this loop turn
            self._flush_handle = loop.call_soon(self._flush)
        else:
            self._flush_handle = loop.call_at(self._due, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
        # Left over from a full statement: they go out with the next one, whenever it may.
        self._due = asyncio.get_running_loop().time() if self._waiting else None
        self._in_flight += 1
        task = asyncio.create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._schedule_flush()

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
