"""One slice of the fleet in one event loop: its agents, their observer and a loop-lag probe.

The run (simulator/fleet.py) asks every shard for a snapshot at each live line and for its
result at the end, whether the shard runs in the same process or in its own
(simulator/shard_process.py): one Python event loop saturates at a few hundred agents.
"""

import asyncio
import contextlib
import random
import ssl
import time
from collections import Counter

from pydantic import BaseModel

from agent.config import AgentConfig
from agent.daemon import CONNECTION_LIFETIME, Agent
from agent.journal import Journal
from agent.network import DirectHttp
from agent.timing import sleep_unless_stopped
from simulator.figures import percentile
from simulator.observer import FleetObserver, ObservingHttp
from simulator.options import SIMULATED_STEPS, SimulationOptions
from simulator.steps import SimulatedSteps

REPORT_GRACE_SECONDS = 10.0
LAG_PROBE_SECONDS = 0.1


class ShardSnapshot(BaseModel):
    """What the live line and the stopping rules need, now."""

    agents: dict[str, int]
    jobs: dict[str, int]
    polls: int
    errors: int
    running: int
    outcomes: int
    last_job_activity: float | None
    rollouts_seen: list[str]
    # Of the lag samples since the previous snapshot: is this loop keeping up right now?
    recent_lag_p50_ms: float | None


class ShardResult(BaseModel):
    """Everything measured, raw, so percentiles are taken over the whole fleet."""

    agents: int
    latencies: dict[str, list[float]]
    loop_lag: list[float]
    errors: dict[str, int]
    outcomes: dict[str, str]
    versions: dict[str, int]
    rollouts_seen: list[str]
    handouts: dict[str, float]


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
    http = DirectHttp(
        config.control_plane_url,
        timeout=config.request_timeout_seconds,
        keepalive_expiry=CONNECTION_LIFETIME,
        tls=tls,
    )
    return Agent(
        config, executor=steps, journal=journal, http=ObservingHttp(http, observer, instance_id)
    )


async def _run_staggered(agent: Agent, delay: float, stop: asyncio.Event) -> None:
    """Agents start spread over one poll interval, as a real fleet's would be."""
    await sleep_unless_stopped(stop, delay)
    if not stop.is_set():
        await agent.run(stop)


class Shard:
    def __init__(self, options: SimulationOptions, instance_ids: list[str], offset: float) -> None:
        """`offset`: this slice's start delays continue where the previous slice's end, so the
        whole fleet's first polls spread evenly over one poll interval."""
        self.options = options
        self.observer = FleetObserver()
        # One TLS context for all: loading the CA bundle costs ~40 ms each.
        tls = ssl.create_default_context()
        self.agents = [_agent(options, i, self.observer, tls) for i in instance_ids]
        self.offset = offset
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.lag: list[float] = []
        self.lag_reported = 0

    async def start(self) -> None:
        spread = self.options.poll_interval / self.options.agents
        self.tasks = [
            asyncio.create_task(_run_staggered(agent, self.offset + n * spread, self.stop))
            for n, agent in enumerate(self.agents)
        ]
        self.tasks.append(asyncio.create_task(self._probe_loop_lag()))

    async def _probe_loop_lag(self) -> None:
        """How much later than asked a short sleep returns: this loop's own saturation."""
        while not self.stop.is_set():
            started = time.perf_counter()
            await sleep_unless_stopped(self.stop, LAG_PROBE_SECONDS)
            if not self.stop.is_set():
                self.lag.append(max(0.0, time.perf_counter() - started - LAG_PROBE_SECONDS))

    async def snapshot(self) -> ShardSnapshot:
        observer = self.observer
        recent = self.lag[self.lag_reported :]
        self.lag_reported = len(self.lag)
        p50 = percentile(recent, 0.5)
        return ShardSnapshot(
            agents=dict(observer.agent_counts()),
            jobs=dict(observer.job_counts()),
            polls=len(observer.latencies["poll"]),
            errors=sum(observer.errors.values()),
            running=observer.running(),
            outcomes=len(observer.outcomes),
            last_job_activity=observer.last_job_activity,
            rollouts_seen=list(observer.rollouts_seen),
            recent_lag_p50_ms=None if p50 is None else round(p50 * 1000, 2),
        )

    async def finish(self, grace_seconds: float) -> ShardResult:
        """Jobs under way get `grace_seconds` to finish, then the agents stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.observer.no_job_running.wait(), grace_seconds)
        self.stop.set()
        await asyncio.gather(*self.tasks)
        observer = self.observer
        return ShardResult(
            agents=len(self.agents),
            latencies=observer.latencies,
            loop_lag=self.lag,
            errors=dict(observer.errors),
            outcomes=observer.outcomes,
            versions=dict(Counter(a.journal.state.current_version for a in self.agents)),
            rollouts_seen=observer.rollouts_seen,
            handouts=observer.handouts,
        )

    async def close(self) -> None:
        """Whatever happened: no agent task outlives the run."""
        self.stop.set()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
