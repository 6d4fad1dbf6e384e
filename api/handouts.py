"""What each rollout hands out now, asked of its workflow at most once per TTL per API process.

When a batch is released, its agents poll within moments of each other; one `handouts` query
answers all of them (concurrent polls share the query in flight), so Temporal sees a few
queries per second per rollout however large the batch. An admin action through this API
forgets the rollout's entry, so a pause here withholds jobs at once; a pause sent straight to
Temporal (CLI) shows in polls within the TTL.
"""

import asyncio
from dataclasses import dataclass

from temporalio.client import Client

from api.metrics import HANDOUT_QUERIES
from workflows import client as rollout_client
from workflows.rollout_models import Handouts

TTL_SECONDS = 0.5
QUERY_TIMEOUT_SECONDS = 5.0


@dataclass
class _Entry:
    asked_at: float
    answer: "asyncio.Future[Handouts]"


class HandoutCache:
    def __init__(self, ttl: float = TTL_SECONDS) -> None:
        self.ttl = ttl
        self._entries: dict[str, _Entry] = {}

    async def handouts(
        self, temporal: Client, rollout_id: str, *, asked_after: float | None = None
    ) -> Handouts:
        """Raises what workflows.client raises (RolloutUnavailable, RolloutGone); not cached.
        With `asked_after` (loop time), an answer asked earlier than that is not reused: polls
        re-checking together share one new query."""
        now = asyncio.get_running_loop().time()
        entry = self._entries.get(rollout_id)
        too_old = entry is not None and asked_after is not None and entry.asked_at < asked_after
        if entry is None or too_old or now - entry.asked_at >= self.ttl:
            self._forget_stale(now)
            entry = _Entry(now, asyncio.ensure_future(self._ask(temporal, rollout_id)))
            self._entries[rollout_id] = entry
        try:
            return await asyncio.shield(entry.answer)
        except Exception:
            if self._entries.get(rollout_id) is entry:
                del self._entries[rollout_id]  # the next poll asks again
            raise

    def forget(self, rollout_id: str) -> None:
        self._entries.pop(rollout_id, None)

    async def _ask(self, temporal: Client, rollout_id: str) -> Handouts:
        HANDOUT_QUERIES.inc()
        return await rollout_client.handouts(temporal, rollout_id, timeout=QUERY_TIMEOUT_SECONDS)

    def _forget_stale(self, now: float) -> None:
        """Keeps the map as small as the set of rollouts being polled right now."""
        for rollout_id in [k for k, e in self._entries.items() if now - e.asked_at >= self.ttl]:
            del self._entries[rollout_id]
