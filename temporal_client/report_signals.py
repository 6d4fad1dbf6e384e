"""Agents' reports that reach an API process together go to their rollout as one signal.

Every job start and end is a signal, and each signal is a request Temporal answers, a history
event and a write of the workflow's state: at a batch's end a hundred agents report within a
second. While a signal to a rollout is on its way, the reports for that rollout that arrive
meanwhile wait and then go as the next one (`job_report_batch`); a lone report is not delayed, it
goes at the end of the event-loop turn it arrived in. Each report is still answered only once
the signal that carries it was delivered, so a report acknowledged is one the workflow has.
"""

import asyncio
from collections.abc import Sequence

from prometheus_client import Histogram
from temporalio.client import Client

from runtime.batches import answer_all
from temporal_client import rollouts as rollout_client
from workflows.rollout_models import JobReportSignal

# The most reports in one signal: far below Temporal's payload limit (2 MiB) at ~300 bytes each.
MAX_BATCH = 200

BATCH_SIZE = Histogram(
    "rollout_report_signal_batch_size",
    "Agent reports delivered to a rollout by one signal",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)

_Waiting = tuple[JobReportSignal, asyncio.Future[None]]


class ReportSignals:
    """One per API process: at most one signal in flight per rollout, the rest queued behind."""

    def __init__(self, temporal: Client, *, timeout: float) -> None:
        self._temporal = temporal
        self._timeout = timeout
        self._waiting: dict[str, list[_Waiting]] = {}
        self._busy: set[str] = set()  # rollouts with a signal scheduled or in flight
        self._tasks: set[asyncio.Task[None]] = set()

    async def deliver(self, rollout_id: str, report: JobReportSignal) -> None:
        """Returns once the workflow has the report; raises what `report_jobs` raises (a report
        waiting behind a signal in flight may wait up to twice the timeout)."""
        delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(rollout_id, []).append((report, delivered))
        self._start(rollout_id)
        await delivered  # cancelled (client gone): a signal under way still carries it

    def _start(self, rollout_id: str) -> None:
        if rollout_id in self._busy or not self._waiting.get(rollout_id):
            return
        self._busy.add(rollout_id)
        task = asyncio.create_task(self._send(rollout_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, rollout_id: str) -> None:
        try:
            await asyncio.sleep(0)  # the end of this loop turn: reports arriving with it join
            waiting = self._waiting.pop(rollout_id, [])
            batch, rest = waiting[:MAX_BATCH], waiting[MAX_BATCH:]
            if rest:
                self._waiting[rollout_id] = rest
            await self._signal(rollout_id, batch)
        finally:
            self._busy.discard(rollout_id)
            self._start(rollout_id)

    async def _signal(self, rollout_id: str, batch: Sequence[_Waiting]) -> None:
        BATCH_SIZE.observe(len(batch))
        reports = [report for report, _ in batch]

        async def signal() -> list[None]:
            await rollout_client.report_jobs(
                self._temporal, rollout_id, reports, timeout=self._timeout
            )
            return [None] * len(reports)

        await answer_all([delivered for _, delivered in batch], signal())
