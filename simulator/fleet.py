"""Run a simulated fleet: N real `Agent`s in one event loop, each with its own instance id,
secret, in-memory journal, simulated steps and its own observed HTTP connection.

`simulate(options)` prints a live line every `summary_interval` seconds and returns the final
figures when a stopping rule fires (or `stop` is set). Jobs under way then get `grace_seconds`
to finish, so stopping does not turn healthy updates into rollbacks.
"""

import asyncio
import contextlib
import random
import ssl
import sys
import time
from collections import Counter
from typing import Any, TextIO

import httpx

from agent.config import AgentConfig
from agent.daemon import CONNECTION_LIFETIME, Agent
from agent.journal import Journal
from agent.timing import sleep_unless_stopped
from simulator.figures import Figures, RolloutFigures, latency, rollout_figures
from simulator.observer import FleetObserver, ObservingTransport
from simulator.options import SIMULATED_STEPS, SimulationOptions
from simulator.rollouts_api import RolloutApiError, RolloutReader
from simulator.steps import SimulatedSteps

# A rollout in one of these needs an operator (or nothing) before anything else happens.
ROLLOUT_SETTLED = frozenset({"completed", "aborted", "paused"})
REPORT_GRACE_SECONDS = 10.0
LAG_PROBE_SECONDS = 0.1


class SimulationError(Exception):
    """The run cannot start; the message says what to fix."""


def _agent(
    options: SimulationOptions, instance_id: str, observer: FleetObserver, tls: ssl.SSLContext
) -> Agent:
    config = AgentConfig(
        control_plane_url=options.control_plane_url.rstrip("/"),
        instance_id=instance_id,
        secret=options.secret_for(instance_id),
        commands={},
        channel=options.channel,
        first_run_version=options.version,
        poll_interval_seconds=options.poll_interval,
        backoff_initial_seconds=min(1.0, options.poll_interval),
        backoff_max_seconds=max(30.0, options.poll_interval),
        stop_report_grace_seconds=REPORT_GRACE_SECONDS,
    )
    seeded = options.seed is not None
    steps = SimulatedSteps(
        {step: options.mean_seconds(step) for step in SIMULATED_STEPS},
        options.fail_rates,
        random.Random(f"{options.seed}/{instance_id}") if seeded else random.Random(),
    )
    journal = Journal.open(None, options.version)
    transport = ObservingTransport(
        httpx.AsyncHTTPTransport(verify=tls, limits=CONNECTION_LIFETIME), observer
    )
    return Agent(config, executor=steps, journal=journal, transport=transport)


async def _run_staggered(agent: Agent, delay: float, stop: asyncio.Event) -> None:
    """Agents start spread over one poll interval, as a real fleet's would be."""
    await sleep_unless_stopped(stop, delay)
    if not stop.is_set():
        await agent.run(stop)


async def _probe_loop_lag(samples: list[float], stop: asyncio.Event) -> None:
    """How much later than asked a short sleep returns: the simulator's own saturation."""
    while not stop.is_set():
        started = time.perf_counter()
        await sleep_unless_stopped(stop, LAG_PROBE_SECONDS)
        if not stop.is_set():
            samples.append(max(0.0, time.perf_counter() - started - LAG_PROBE_SECONDS))


class _Monitor:
    """The live line and the stopping rules, both read from the observer and the admin API."""

    def __init__(
        self,
        options: SimulationOptions,
        observer: FleetObserver,
        reader: RolloutReader | None,
        out: TextIO,
    ) -> None:
        self.options = options
        self.observer = observer
        self.reader = reader
        self.out = out
        self.started = time.monotonic()
        self.last_polls = 0
        self.last_tick = self.started

    def tracked_rollout(self) -> str | None:
        seen = self.observer.rollouts_seen
        return (
            self.options.until_rollout or self.options.track_rollout or (seen[-1] if seen else None)
        )

    async def rollout(self) -> tuple[dict[str, Any] | None, str]:
        rollout_id = self.tracked_rollout()
        if self.reader is None or rollout_id is None:
            return None, ""
        try:
            rollout = await self.reader.rollout(rollout_id)
        except RolloutApiError as exc:
            return None, f" · rollout {rollout_id}: {exc}"
        batch = f"batch {rollout.get('currentBatch')}/{rollout.get('totalBatches')}"
        return rollout, f" · rollout {rollout_id} {rollout['status']} {batch}"

    def line(self, rollout_text: str) -> str:
        now = time.monotonic()
        polls = len(self.observer.latencies["poll"])
        rate = (polls - self.last_polls) / max(1e-6, now - self.last_tick)
        self.last_polls, self.last_tick = polls, now
        agents = self.observer.agent_counts()
        agent_text = ", ".join(
            f"{agents[k]} {k}" for k in ("starting", "polling", "running", "done", "failed")
        )
        jobs = ", ".join(f"{n} {k}" for k, n in sorted(self.observer.job_counts().items()))
        errors = sum(self.observer.errors.values())
        return (
            f"{now - self.started:7.1f} s  agents: {agent_text} · {rate:.1f} polls/s"
            f" · jobs: {jobs or 'none'} · errors: {errors}{rollout_text}"
        )

    def stop_reason(self, rollout: dict[str, Any] | None) -> str | None:
        options = self.options
        elapsed = time.monotonic() - self.started
        if options.duration is not None and elapsed >= options.duration:
            return f"--duration {options.duration:g} s reached"
        if options.until_rollout and rollout and rollout["status"] in ROLLOUT_SETTLED:
            return f"rollout {options.until_rollout} is {rollout['status']}"
        last_activity = self.observer.last_job_activity
        if (
            options.until_idle
            and self.observer.outcomes
            and self.observer.running() == 0
            and last_activity is not None
            and time.monotonic() - last_activity >= options.idle_seconds
        ):
            return f"no job for {options.idle_seconds:g} s"
        return None

    async def until_a_rule_fires(self, stop: asyncio.Event) -> str:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.options.summary_interval)
            if stop.is_set():
                return "stopped"
            rollout, rollout_text = await self.rollout()
            print(self.line(rollout_text), file=self.out, flush=True)
            reason = self.stop_reason(rollout)
            if reason is not None:
                return reason


async def _let_jobs_finish(observer: FleetObserver, grace_seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(observer.no_job_running.wait(), grace_seconds)


def _check(options: SimulationOptions) -> None:
    if options.until_rollout and not options.admin_token:
        raise SimulationError("--until-rollout reads the rollout: set CONTROL_PLANE_ADMIN_TOKEN")
    missing = [i for i in options.instance_ids() if i not in options.secrets]
    if missing and options.default_secret is None:
        raise SimulationError(
            f"no secret for {missing[0]}"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
            + ": set AGENT_SECRET (or CONTROL_PLANE_AGENT_TOKEN) or pass --secrets-file"
        )


async def _rollout_figures(
    reader: RolloutReader, rollout_ids: list[str], out: TextIO
) -> list[RolloutFigures]:
    figures = []
    for rollout_id in rollout_ids:
        try:
            rollout = await reader.rollout(rollout_id)
            figures.append(rollout_figures(rollout, await reader.jobs(rollout_id)))
        except RolloutApiError as exc:
            print(f"rollout {rollout_id}: no figures: {exc}", file=out)
    return figures


async def simulate(
    options: SimulationOptions,
    *,
    stop: asyncio.Event | None = None,
    out: TextIO | None = None,
) -> Figures:
    """Run the fleet until a stopping rule fires or `stop` is set; return the figures."""
    _check(options)
    out = out or sys.stderr
    stop = stop or asyncio.Event()
    observer = FleetObserver()
    # One TLS context for all: loading the CA bundle costs ~40 ms each.
    tls = ssl.create_default_context()
    agents = [_agent(options, i, observer, tls) for i in options.instance_ids()]
    reader = (
        RolloutReader(options.control_plane_url, options.admin_token)
        if options.admin_token
        else None
    )
    monitor = _Monitor(options, observer, reader, out)
    agents_stop = asyncio.Event()
    spread = options.poll_interval / len(agents)
    tasks = [
        asyncio.create_task(_run_staggered(agent, n * spread, agents_stop))
        for n, agent in enumerate(agents)
    ]
    lag: list[float] = []
    tasks.append(asyncio.create_task(_probe_loop_lag(lag, agents_stop)))
    try:
        reason = await monitor.until_a_rule_fires(stop)
        print(
            f"stopping: {reason}; letting jobs under way finish"
            f" (at most {options.grace_seconds:g} s)",
            file=out,
            flush=True,
        )
        await _let_jobs_finish(observer, options.grace_seconds)
        agents_stop.set()
        await asyncio.gather(*tasks)
        seconds = time.monotonic() - monitor.started
        tracked = [r for r in (options.until_rollout, options.track_rollout) if r]
        rollout_ids = list(dict.fromkeys([*tracked, *observer.rollouts_seen]))
        rollouts = await _rollout_figures(reader, rollout_ids, out) if reader else []
    finally:
        agents_stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if reader is not None:
            await reader.aclose()
    polls = len(observer.latencies["poll"])
    return Figures(
        agents=options.agents,
        seconds=round(seconds, 3),
        polls=polls,
        polls_per_second=round(polls / seconds, 2),
        poll_latency=latency(observer.latencies["poll"]),
        report_latency=latency(observer.latencies["report"]),
        client_loop_lag=latency(lag),
        request_errors=dict(observer.errors),
        jobs=dict(Counter(observer.outcomes.values())),
        agents_on_version=dict(Counter(a.journal.state.current_version for a in agents)),
        rollouts=rollouts,
    )
