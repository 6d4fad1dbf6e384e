"""Reports to the control plane, delivered in order, each retried until acknowledged.

Runs beside the job so an unreachable control plane never holds an update half done. A verified
409 (the job already ended otherwise) or 401/403/404 will not change by retrying: logged and
dropped. A verified refusal that says the job has ended (`jobStatus` settled: the control plane
cancelled it or its deadline passed) is noted in `ended`, which the job's runner reads before
each step: it goes no further and rolls back. After the agent is told to stop it keeps trying
for a grace period; a final report still unsent then stays in the journal and is sent on the
next start.
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from agent.journal import Journal, Report
from agent.logs import InstanceLog
from agent.state_dir import StateDirUnusable
from agent.timing import retry_delay
from agent.transport import RequestFailed
from contract.wire import TERMINAL_JOB_STATUSES, ReportResponse

SendReport = Callable[[Report], Awaitable[ReportResponse]]


class ReportSender:
    def __init__(
        self,
        send: SendReport,
        journal: Journal,
        log: InstanceLog,
        *,
        backoff: tuple[float, float],
        stop: asyncio.Event,
        stop_grace_seconds: float,
    ) -> None:
        self._send = send
        self._journal = journal
        self._log = log
        self._backoff = backoff
        self._stop = stop
        self._stop_grace = stop_grace_seconds
        self._give_up_at: float | None = None
        self._queue: asyncio.Queue[Report] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        # Jobs a verified refusal said have ended, with the status they ended in.
        self.ended: dict[str, str] = {}

    def start(self) -> None:
        self._task = asyncio.create_task(self._deliver_forever())

    def submit(self, report: Report) -> None:
        self._queue.put_nowait(report)

    async def drain(self) -> None:
        """Until every submitted report is acknowledged, dropped, or given up after a stop."""
        await self._queue.join()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _deliver_forever(self) -> None:
        while True:
            report = await self._queue.get()
            try:
                await self._deliver(report)
            finally:
                self._queue.task_done()

    def _refused(
        self, report: Report, exc: RequestFailed, what: str, about: dict[str, str | None]
    ) -> None:
        job_status = exc.document.get("jobStatus")
        if exc.status == 409 and job_status in TERMINAL_JOB_STATUSES:
            first = report.jobId not in self.ended
            self.ended.setdefault(report.jobId, str(job_status))
            if exc.document.get("hostOutcome") == report.status:
                self._log.info(
                    "%s: the job is %s; recorded as the host's outcome",
                    what,
                    job_status,
                    extra=about,
                )
                return
            if first and report.status == "in_progress":
                self._log.warning(
                    "%s refused: the control plane ended the job (%s); no further step runs,"
                    " what ran is rolled back",
                    what,
                    job_status,
                    extra=about,
                )
                return
        level = logging.WARNING if exc.status == 409 else logging.ERROR
        self._log.log(level, "%s refused for good, dropped: %s", what, exc, extra=about)

    def _seconds_left_after_stop(self) -> float | None:
        if not self._stop.is_set():
            return None
        loop = asyncio.get_running_loop()
        if self._give_up_at is None:
            self._give_up_at = loop.time() + self._stop_grace
        return self._give_up_at - loop.time()

    async def _deliver(self, report: Report) -> None:
        failures = 0
        what = f"report {report.status} at {report.step} for job {report.jobId}"
        about = {"job_id": report.jobId, "status": report.status, "step": report.step}
        while True:
            try:
                answer = await self._send(report)
            except RequestFailed as exc:
                if exc.final:
                    self._refused(report, exc, what, about)
                    break
                failures += 1
                delay = retry_delay(failures, *self._backoff, exc.retry_after)
                left = self._seconds_left_after_stop()
                if left is not None and left <= 0:
                    self._log.warning(
                        "%s not delivered before stopping: %s", what, exc, extra=about
                    )
                    return
                level = logging.ERROR if exc.untrusted else logging.WARNING
                self._log.log(
                    level, "%s failed (%s); retry in %.1f s", what, exc, delay, extra=about
                )
                await asyncio.sleep(delay if left is None else min(delay, left))
                continue
            self._log.info("%s acknowledged (job is %s)", what, answer.status, extra=about)
            break
        if report in self._journal.state.unacknowledged:
            # Not written down, the report is sent again by the next start (the same report
            # again changes nothing); the agent stops on the journal's `unusable`.
            with contextlib.suppress(StateDirUnusable):
                self._journal.acknowledged(report)
