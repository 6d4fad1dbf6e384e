"""Run a simulated fleet: N real `Agent`s, each with its own instance id, secret, in-memory
journal, simulated steps and its own observed HTTP connection, spread over one or more
processes (each its own event loop: one loop saturates at a few hundred agents).

`simulate(options)` prints a live line every `summary_interval` seconds and returns the final
figures when a stopping rule fires (or `stop` is set). Jobs under way then get `grace_seconds`
to finish, so stopping does not turn healthy updates into rollbacks.
"""

import asyncio
import contextlib
import itertools
import math
import os
import sys
import time
from collections import Counter
from typing import Any, Protocol, TextIO

from pydantic import BaseModel

from contract.wire import FINISHED_ROLLOUT_STATUSES
from simulator.figures import (
    LAGGING_P50_MS,
    Figures,
    ProcessFigures,
    RolloutFigures,
    latency,
    rollout_figures,
)
from simulator.options import SimulationOptions
from simulator.rollouts_api import RolloutApiError, RolloutReader
from simulator.shard import Shard, ShardResult, ShardSnapshot
from simulator.shard_process import RemoteShard, SimulatorProcessError

# A rollout in one of these needs an operator (or nothing) before anything else happens.
ROLLOUT_SETTLED = FINISHED_ROLLOUT_STATUSES | {"paused"}
# One event loop keeps up with about this many agents polling every second or two.
AGENTS_PER_PROCESS = 200


class SimulationError(Exception):
    """The run cannot start; the message says what to fix."""


class _Slice(Protocol):
    async def start(self) -> None: ...
    async def snapshot(self) -> ShardSnapshot: ...
    async def finish(self, grace_seconds: float) -> ShardResult: ...
    async def close(self) -> None: ...


def default_processes(agents: int) -> int:
    """One per AGENTS_PER_PROCESS agents, at most one per core: more would only compete."""
    return max(1, min(os.cpu_count() or 1, math.ceil(agents / AGENTS_PER_PROCESS)))


def _slices(options: SimulationOptions) -> list[_Slice]:
    """One process runs its agents in this loop; more run each slice in its own process."""
    ids = options.instance_ids()
    count = min(len(ids), options.processes or default_processes(len(ids)))
    spread = options.poll_interval / len(ids)
    bounds = [len(ids) * n // count for n in range(count + 1)]
    parts = [(ids[a:b], a * spread) for a, b in itertools.pairwise(bounds)]
    if count == 1:
        return [Shard(options, ids, 0.0)]
    return [RemoteShard(options, part, offset) for part, offset in parts]


class FleetSnapshot(BaseModel):
    """Every slice's snapshot, summed."""

    agents: Counter[str]
    jobs: Counter[str]
    polls: int
    errors: int
    running: int
    outcomes: int
    last_job_activity: float | None
    rollouts_seen: list[str]
    recent_lag_p50_ms: list[float | None]

    @classmethod
    def of(cls, parts: list[ShardSnapshot]) -> "FleetSnapshot":
        activity = [p.last_job_activity for p in parts if p.last_job_activity is not None]
        return cls(
            agents=sum((Counter(p.agents) for p in parts), Counter()),
            jobs=sum((Counter(p.jobs) for p in parts), Counter()),
            polls=sum(p.polls for p in parts),
            errors=sum(p.errors for p in parts),
            running=sum(p.running for p in parts),
            outcomes=sum(p.outcomes for p in parts),
            last_job_activity=max(activity, default=None),
            rollouts_seen=list(dict.fromkeys(r for p in parts for r in p.rollouts_seen)),
            recent_lag_p50_ms=[p.recent_lag_p50_ms for p in parts],
        )


class _Monitor:
    """The live line and the stopping rules, both read from the slices and the admin API."""

    def __init__(
        self,
        options: SimulationOptions,
        slices: list[_Slice],
        reader: RolloutReader | None,
        out: TextIO,
    ) -> None:
        self.options = options
        self.slices = slices
        self.reader = reader
        self.out = out
        self.started = time.monotonic()
        self.last_polls = 0
        self.last_tick = self.started

    def tracked_rollout(self, fleet: FleetSnapshot) -> str | None:
        seen = fleet.rollouts_seen
        return (
            self.options.until_rollout or self.options.track_rollout or (seen[-1] if seen else None)
        )

    async def rollout(self, fleet: FleetSnapshot) -> tuple[dict[str, Any] | None, str]:
        rollout_id = self.tracked_rollout(fleet)
        if self.reader is None or rollout_id is None:
            return None, ""
        try:
            rollout = await self.reader.rollout(rollout_id)
        except RolloutApiError as exc:
            return None, f" · rollout {rollout_id}: {exc}"
        batch = f"batch {rollout.get('currentBatch')}/{rollout.get('totalBatches')}"
        return rollout, f" · rollout {rollout_id} {rollout['status']} {batch}"

    def line(self, fleet: FleetSnapshot, rollout_text: str) -> str:
        now = time.monotonic()
        rate = (fleet.polls - self.last_polls) / max(1e-6, now - self.last_tick)
        self.last_polls, self.last_tick = fleet.polls, now
        agent_text = ", ".join(
            f"{fleet.agents[k]} {k}" for k in ("starting", "polling", "running", "done", "failed")
        )
        jobs = ", ".join(f"{n} {k}" for k, n in sorted(fleet.jobs.items()))
        lags = [lag for lag in fleet.recent_lag_p50_ms if lag is not None]
        lag_text = ""
        if lags:
            lag_text = f" · loop lag p50 {max(lags):.0f} ms" + (
                " LAGGING" if max(lags) > LAGGING_P50_MS else ""
            )
        return (
            f"{now - self.started:7.1f} s  agents: {agent_text} · {rate:.1f} polls/s"
            f" · jobs: {jobs or 'none'} · errors: {fleet.errors}{lag_text}{rollout_text}"
        )

    def stop_reason(self, fleet: FleetSnapshot, rollout: dict[str, Any] | None) -> str | None:
        options = self.options
        elapsed = time.monotonic() - self.started
        if options.duration is not None and elapsed >= options.duration:
            return f"--duration {options.duration:g} s reached"
        if options.until_rollout and rollout and rollout["status"] in ROLLOUT_SETTLED:
            return f"rollout {options.until_rollout} is {rollout['status']}"
        last_activity = fleet.last_job_activity
        if (
            options.until_idle
            and fleet.outcomes
            and fleet.running == 0
            and last_activity is not None
            and time.time() - last_activity >= options.idle_seconds
        ):
            return f"no job for {options.idle_seconds:g} s"
        return None

    async def until_a_rule_fires(self, stop: asyncio.Event) -> str:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.options.summary_interval)
            if stop.is_set():
                return "stopped"
            fleet = FleetSnapshot.of(await asyncio.gather(*(s.snapshot() for s in self.slices)))
            rollout, rollout_text = await self.rollout(fleet)
            print(self.line(fleet, rollout_text), file=self.out, flush=True)
            reason = self.stop_reason(fleet, rollout)
            if reason is not None:
                return reason


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
    reader: RolloutReader, rollout_ids: list[str], handouts: dict[str, float], out: TextIO
) -> list[RolloutFigures]:
    figures = []
    for rollout_id in rollout_ids:
        try:
            rollout = await reader.rollout(rollout_id)
            figures.append(rollout_figures(rollout, await reader.jobs(rollout_id), handouts))
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
    slices = _slices(options)
    reader = (
        RolloutReader(options.control_plane_url, options.admin_token)
        if options.admin_token
        else None
    )
    monitor = _Monitor(options, slices, reader, out)
    try:
        await asyncio.gather(*(s.start() for s in slices))
        reason = await monitor.until_a_rule_fires(stop)
        print(
            f"stopping: {reason}; letting jobs under way finish"
            f" (at most {options.grace_seconds:g} s)",
            file=out,
            flush=True,
        )
        results = await asyncio.gather(*(s.finish(options.grace_seconds) for s in slices))
        seconds = time.monotonic() - monitor.started
        handouts = {job: at for r in results for job, at in r.handouts.items()}
        tracked = [r for r in (options.until_rollout, options.track_rollout) if r]
        seen = [rollout for r in results for rollout in r.rollouts_seen]
        rollout_ids = list(dict.fromkeys([*tracked, *seen]))
        rollouts = await _rollout_figures(reader, rollout_ids, handouts, out) if reader else []
    except SimulatorProcessError as exc:
        raise SimulationError(str(exc)) from None
    finally:
        await asyncio.gather(*(s.close() for s in slices))
        if reader is not None:
            await reader.aclose()
    return _figures(options, results, seconds, rollouts)


def _figures(
    options: SimulationOptions,
    results: list[ShardResult],
    seconds: float,
    rollouts: list[RolloutFigures],
) -> Figures:
    processes = [
        ProcessFigures(
            agents=r.agents, polls=len(r.latencies["poll"]), loop_lag=latency(r.loop_lag)
        )
        for r in results
    ]
    polls = sum(p.polls for p in processes)
    errors: Counter[str] = Counter()
    versions: Counter[str] = Counter()
    for r in results:
        errors.update(r.errors)
        versions.update(r.versions)
    return Figures(
        agents=options.agents,
        seconds=round(seconds, 3),
        polls=polls,
        polls_per_second=round(polls / seconds, 2),
        poll_latency=latency([s for r in results for s in r.latencies["poll"]]),
        report_latency=latency([s for r in results for s in r.latencies["report"]]),
        client_loop_lag=latency([s for r in results for s in r.loop_lag]),
        processes=processes,
        lagging=any(p.lagging for p in processes),
        request_errors=dict(errors),
        jobs=dict(Counter(status for r in results for status in r.outcomes.values())),
        agents_on_version=dict(versions),
        rollouts=rollouts,
    )
