"""Poll jitter and exponential backoff, so a fleet does not hit the control plane in lockstep."""

import asyncio
import contextlib
import random

POLL_JITTER = 0.2


def jittered(interval: float) -> float:
    return interval * random.uniform(1 - POLL_JITTER, 1 + POLL_JITTER)


def hold_asked(offered: int, *, first: bool) -> int:
    """How long to ask a poll to be held, whole seconds: the first hold after an offer anything
    up to the offer, each later one up to a fifth less than offered. Agents that start together
    (a fleet's hosts booted at once, every agent after an outage or an API restart) would
    otherwise have their holds run out together, hold after hold: at 10,000 hosts each 25 s
    brought every poll back within a second, and their statements ran past 5 s (503s). The
    first hold spreads them over the whole offer at once; the later ones keep them apart."""
    if not offered:
        return 0
    return random.randint(1 if first else max(1, offered - offered // 5), offered)


def backoff_delay(failures: int, initial: float, maximum: float) -> float:
    """Exponential with "equal jitter": at least half the step, so retries never bunch at zero."""
    step = min(maximum, initial * 2 ** max(0, failures - 1))
    return step / 2 + random.uniform(0, step / 2)


def retry_delay(failures: int, initial: float, maximum: float, retry_after: float | None) -> float:
    """The backoff, but never sooner than a 503's `Retry-After` asks (capped at `maximum`)."""
    delay = backoff_delay(failures, initial, maximum)
    return delay if retry_after is None else max(delay, min(retry_after, maximum))


async def sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
