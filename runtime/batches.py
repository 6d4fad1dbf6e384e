"""One piece of work answering many waiters: the shape shared by the API's poll statements and
report signals, where requests that arrive together are served by one round trip."""

import asyncio
from collections.abc import Awaitable, Sequence
from typing import TypeVar

T = TypeVar("T")


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
