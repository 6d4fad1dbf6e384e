"""The agent loop: poll with jitter (or held by the control plane, when it offers that), back off
on errors, run a job, keep reports flowing.

`Agent` holds no process-wide state, so a fleet simulator can run many in one event loop with
its own `StepExecutor` and in-memory journals.
"""

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from agent.config import AgentConfig
from agent.job import JobRunner
from agent.journal import Journal, Report
from agent.logs import instance_log
from agent.network import ControlPlaneHttp, control_plane_http
from agent.reports import ReportSender
from agent.state_dir import StateDirUnusable
from agent.steps import ShellExecutor, StepExecutor
from agent.timing import hold_asked, jittered, retry_delay, sleep_unless_stopped
from agent.transport import RequestFailed, Signer, signed_exchange, signed_post
from contract.long_poll import LONG_POLL_HEADER, POLL_WAIT_HEADER
from contract.wire import DOWNGRADE_CAPABILITY, PollResponse, ReportResponse
from runtime.build import package_version

POLL_PATH = "/api/updates/next"
REPORT_PATH = "/api/updates/report"
T = TypeVar("T")
# The longest the agent lets a poll be held when the control plane offers it (docs/protocol.md):
# jobs then arrive as they are released, whatever AGENT_POLL_INTERVAL says.
LONG_POLL_SECONDS = 25


# Reuse a connection only while the server surely keeps it: uvicorn and many proxies close idle
# ones after 5 s, and a poll sent on a connection closing under it fails with a read error.
CONNECTION_LIFETIME = 4.0  # seconds


async def _unless_stopped(request: Coroutine[Any, Any, T], stop: asyncio.Event) -> T | None:
    """A poll hanging on a slow control plane must not delay a SIGTERM: None when stopped."""
    task = asyncio.ensure_future(request)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
    stopped.cancel()
    return task.result()


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        executor: StepExecutor | None = None,
        journal: Journal | None = None,
        http: ControlPlaneHttp | None = None,
    ) -> None:
        self.config = config
        self.executor = executor or ShellExecutor(config)
        self.journal = journal or Journal.open(config.state_dir, config.first_run_version)
        self.http = http
        self.signer = Signer(config.instance_id, config.secret)
        self.log = instance_log(__name__, config.instance_id)

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set: then the running step finishes, reports go out, and it returns.
        Raises StateDirUnusable once the state directory refuses a write, after reporting the
        job in flight failed (agent/job.py `abandon`)."""
        http = self.http or control_plane_http(
            self.config.control_plane_url,
            timeout=self.config.request_timeout_seconds,
            keepalive_expiry=CONNECTION_LIFETIME,
        )
        try:
            await self._run(http, stop)
        finally:
            await http.aclose()
        self.log.info("stopped")

    async def _run(self, http: ControlPlaneHttp, stop: asyncio.Event) -> None:
        async def send_report(report: Report) -> ReportResponse:
            fields = report.model_dump()
            return await signed_post(http, self.signer, REPORT_PATH, fields, ReportResponse)

        reports = ReportSender(
            send_report,
            self.journal,
            self.log,
            backoff=(self.config.backoff_initial_seconds, self.config.backoff_max_seconds),
            stop=stop,
            stop_grace_seconds=self.config.stop_report_grace_seconds,
        )
        runner = JobRunner(
            channel=self.config.channel,
            journal=self.journal,
            instance_id=self.config.instance_id,
            secret=self.config.secret,
            release_keys=self.config.release_keys,
            release_keys_threshold=self.config.release_keys_threshold,
            executor=self.executor,
            reports=reports,
            stop=stop,
            log=self.log,
        )
        reports.start()
        try:
            for report in self.journal.state.unacknowledged:
                reports.submit(report)
            self.journal.check_writable()
            await runner.recover()
            await self._poll_until_stopped(http, runner, reports, stop)
            await reports.drain()
        except StateDirUnusable as exc:
            # Nothing more runs; what can still be told goes out within the stop grace.
            runner.abandon(exc)
            stop.set()
            await reports.drain()
            raise
        finally:
            await reports.close()

    async def _poll_until_stopped(
        self,
        http: ControlPlaneHttp,
        runner: JobRunner,
        reports: ReportSender,
        stop: asyncio.Event,
    ) -> None:
        failures = 0
        self.log.info(
            "polling %s every %g s on channel %s, current version %s",
            self.config.control_plane_url,
            self.config.poll_interval_seconds,
            self.config.channel,
            self.journal.state.current_version,
        )
        loop = asyncio.get_running_loop()
        hold = 0  # seconds this agent asks the control plane to hold its poll; 0 until offered
        asked = 0  # what the last poll asked for
        while not stop.is_set():
            if self.journal.unusable is not None:
                raise self.journal.unusable
            fields = {
                "channel": self.config.channel,
                "currentVersion": self.journal.state.current_version,
                "agentVersion": package_version(),
                "capabilities": [DOWNGRADE_CAPABILITY],
            }
            asked, started = hold_asked(hold, first=not asked), loop.time()
            try:
                answered = await _unless_stopped(
                    signed_exchange(
                        http,
                        self.signer,
                        POLL_PATH,
                        fields,
                        PollResponse,
                        headers={POLL_WAIT_HEADER: str(asked)} if asked else None,
                        timeout=self.config.request_timeout_seconds + asked,
                    ),
                    stop,
                )
            except RequestFailed as exc:
                failures += 1
                delay = retry_delay(
                    failures,
                    self.config.backoff_initial_seconds,
                    self.config.backoff_max_seconds,
                    exc.retry_after,
                )
                level = logging.ERROR if exc.untrusted else logging.WARNING
                self.log.log(level, "poll failed (%s); retry in %.1f s", exc, delay)
                await sleep_unless_stopped(stop, delay)
                continue
            if answered is None:
                return
            answer, headers = answered
            if failures:
                self.log.info("control plane answers again after %d failed poll(s)", failures)
                failures = 0
            hold = _hold_offered(headers)
            if hold != asked:
                self.log.info("control plane holds polls up to %d s (0: it does not)", hold)
            job = answer.job
            if job is not None and not self.journal.has_finished(job.id):
                await runner.run(job)
                # The next poll waits for the job's last reports: one request in flight, so one
                # connection per agent (a batch ending at once would otherwise double them).
                await _unless_stopped(reports.drain(), stop)
            # Nothing to do, and the next poll is held at once: holds were just offered, or this
            # one was held to its end. Its end is judged by the clock, as the headers are not
            # signed: whatever anyone on the way does to them, at most one poll per hold (and
            # one more per interval when an offer comes and goes).
            if job is None and hold and (not asked or loop.time() - started >= asked):
                continue
            await sleep_unless_stopped(stop, jittered(self.config.poll_interval_seconds))


def _hold_offered(headers: Mapping[str, str]) -> int:
    """How long to ask the next poll to be held: what the control plane offers, at most
    LONG_POLL_SECONDS; 0 when it offers nothing (an API older than long-poll)."""
    offered = headers.get(LONG_POLL_HEADER, "")
    return min(int(offered), LONG_POLL_SECONDS) if offered.isdigit() else 0
