"""One piece of work answering many waiters: the shape shared by the API's poll and report
statements and its report signals, where requests that arrive together are served by one round
trip."""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
Item = TypeVar("Item")
Outcome = TypeVar("Outcome")


async def answer_all(waiters: Sequence[asyncio.Future[T]], work: Awaitable[Sequence[T]]) -> None:
    """Each waiter gets its result from `work` (one per waiter, in order), or its failure.

    A waiter cancelled meanwhile (its client gone) is skipped: the work still went out for it.
    """
    try:
        results = await work
    except Exception as exc:
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(exc)
    except asyncio.CancelledError:
        for waiter in waiters:
            waiter.cancel()
        raise
    else:
        for waiter, result in zip(waiters, results, strict=True):
            if not waiter.done():
                waiter.set_result(result)


class Batcher(Generic[Item, Outcome]):
    """Items that arrive together are done together: one call of `run` (one statement, one
    commit) for many, each item answered with its own result once that call is done.

    At thousands of requests a second the round trips and commits, not the work in them, are
    what PostgreSQL and the API spend: a statement of one poll costs about twenty times as much
    per poll as one of sixty-four. Items that arrive in one turn of the event loop, or while
    `max_in_flight` calls are already running, go out together. An item that must be answered
    soon goes out at the end of the loop turn it arrived in; a patient one (its client waits
    anyway) waits up to `gather_seconds` for others to share its call, so a steady trickle of
    items does not cost a call each. Nothing waits for a batch to fill.
    """

    def __init__(
        self,
        run: Callable[[Sequence[Item]], Awaitable[Sequence[Outcome]]],
        *,
        max_in_flight: int,
        max_batch: int,
        gather_seconds: float,
        observe_size: Callable[[int], None],
    ) -> None:
        self._run = run
        self.max_in_flight = max_in_flight
        self.max_batch = max_batch
        self.gather_seconds = gather_seconds
        self._observe_size = observe_size  # a metric of the items per call
        self._waiting: list[tuple[Item, asyncio.Future[Outcome]]] = []
        # When the waiting items go out at the latest (loop time); None while none wait.
        self._due: float | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._flush_at = 0.0
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: Item, *, patient: bool = False) -> Outcome:
        """The item's result, once the call that did it is done. `patient`: it may wait up to
        `gather_seconds` for company."""
        loop = asyncio.get_running_loop()
        result: asyncio.Future[Outcome] = loop.create_future()
        self._waiting.append((item, result))
        now = loop.time()
        soon = not patient or len(self._waiting) >= self.max_batch
        due = now if soon else now + self.gather_seconds
        if self._due is None or due < self._due:
            self._due = due
        self._schedule_flush()
        return await result  # cancelled (client gone): a call under way still does the item

    def _schedule_flush(self) -> None:
        if self._due is None or self._in_flight >= self.max_in_flight:
            return
        if self._flush_handle is not None:
            if self._flush_at <= self._due:
                return
            self._flush_handle.cancel()  # an impatient item came: sooner than the gathering
        loop = asyncio.get_running_loop()
        self._flush_at = self._due
        if self._due <= loop.time():  # at the end of this loop turn
            self._flush_handle = loop.call_soon(self._flush)
        else:
            self._flush_handle = loop.call_at(self._due, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        batch = self._waiting[: self.max_batch]
        self._waiting = self._waiting[self.max_batch :]
        # Left over from a full call: they go out with the next one, whenever it may.
        self._due = asyncio.get_running_loop().time() if self._waiting else None
        self._in_flight += 1
        task = asyncio.create_task(self._call(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._schedule_flush()

    async def _call(self, batch: Sequence[tuple[Item, asyncio.Future[Outcome]]]) -> None:
        self._observe_size(len(batch))
        try:
            # every item of the batch gets its result, or the call's failure
            await answer_all([result for _, result in batch], self._run([i for i, _ in batch]))
        finally:
            self._in_flight -= 1
            self._schedule_flush()
