"""Benchmark: a simulated fleet against a whole local stack (`rollout dev` in a temp folder, on
free ports: PostgreSQL, Temporal dev server, worker, API as separate processes).

    .venv/bin/python -m benchmarks.fleet --agents 1000 --batch-size 100 --poll-interval 1

The fleet (spread over `--processes` simulator processes) registers by polling, a signed release
is uploaded, a rollout with autoAdvance (or, with `--advance`, advanced batch by batch through
the API) runs to `completed` (with `--revert`, then a fleet revert takes every host back to the
release it ran before, 1.0.0, in batches of the same size), and then are printed: the
simulator's figures (polls/s, p50/p99 poll and report latency, each process's loop lag, flagged
when it lagged), the time of each phase of each batch (benchmarks/batch_phases.py) and the API
process's peak RSS, and with `--advance` the time from each advance to the first handout of its
batch. Not a test: numbers depend on the machine.
"""

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

from benchmarks import procstat
from benchmarks.batch_phases import RolloutPhases, rollout_phases
from benchmarks.batch_phases import render as render_phases
from contract.manifest import UnsignedManifest
from devstack import secrets as dev_secrets
from devstack.ports import free_port
from devstack.stack import DEV_DATABASE
from runtime.logs import configure_logging
from simulator.figures import Figures, render
from simulator.fleet import simulate
from simulator.options import SimulationOptions
from store.pool import connect

STACK_START_SECONDS = 120.0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--poll-interval", type=float, default=2.0)
    p.add_argument("--step-seconds", type=float, default=0.2)
    p.add_argument("--bake-seconds", type=int, default=0)
    p.add_argument(
        "--advance",
        action="store_true",
        help="advance each batch through the API (no autoAdvance) and time advance → handout",
    )
    p.add_argument(
        "--revert",
        action="store_true",
        help="then revert the fleet to the release it ran before (docs/reverts.md) and time it",
    )
    p.add_argument(
        "--processes", type=int, help="simulator processes (default: one per 200 agents, ≤ cores)"
    )
    p.add_argument("--json", action="store_true")
    return p.parse_args()


async def wait_until_healthy(url: str, stack: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + STACK_START_SECONDS
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        while time.monotonic() < deadline:
            if stack.returncode is not None:
                raise RuntimeError(f"rollout dev exited with status {stack.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/health")).status_code == 200:
                    return
            await asyncio.sleep(0.5)
    raise RuntimeError(f"the stack did not answer /health within {STACK_START_SECONDS:g} s")


async def upload_release(
    admin: httpx.AsyncClient, signing_secret: str, version: str = "2.0.0"
) -> str:
    manifest = UnsignedManifest(
        version=version,
        sha="0123456789abcdef0123456789abcdef01234567",
        channel="stable",
        migrations_required=True,
        breaking_changes=None,
        released_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    ).signed(signing_secret)
    uploaded = await admin.post("/api/releases", json=manifest.as_document())
    uploaded.raise_for_status()
    return uploaded.json()["id"]


async def wait_for(
    admin: httpx.AsyncClient,
    path: str,
    done: Callable[[Any], bool],
    seconds: float,
    seen: Callable[[Any], None] = lambda _: None,
) -> Any:
    """Polls an admin GET every second until `done(json)`, and returns that json; there is no
    event to await. `seen` is shown every answer."""
    async with asyncio.timeout(seconds):
        while True:
            answer = (await admin.get(path)).json()
            seen(answer)
            if done(answer):
                return answer
            await asyncio.sleep(1)


async def registered(database: str, agents: int, seconds: float) -> None:
    """Waits until every agent's first poll registered its instance, counted in PostgreSQL: a
    listing of 10,000 instances a second through the API would weigh on the API's figures."""
    conn = await connect(database)
    try:
        async with asyncio.timeout(seconds):
            while True:  # no event to await: the count is another process's doing
                if await conn.fetchval("SELECT count(*) FROM instances") >= agents:
                    return
                await asyncio.sleep(1)
    finally:
        await conn.close()


def api_pid(stack_pid: int) -> int:
    """The stack's API process (`rollout dev` runs it as a direct child)."""
    for pid in procstat.child_pids(stack_pid):
        if procstat.command_line(pid)[2:4] == ["cli.main", "api"]:
            return pid
    raise RuntimeError("the stack has no API process")


def cpu_by_part(stack_pid: int) -> dict[str, float]:
    """CPU seconds used so far by each part of the stack and by the simulator (this process
    and its shard processes, the stack's subtree left out)."""
    parts: dict[str, float] = {}
    for pid in procstat.child_pids(stack_pid):
        line = procstat.command_line(pid)
        name = line[3] if line[2:3] == ["cli.main"] else Path(line[0]).name
        name = "temporal" if name.startswith("temporal") else name
        parts[name] = parts.get(name, 0.0) + procstat.tree_cpu_seconds(pid)
    me = os.getpid()
    shards = [p for p in procstat.child_pids(me) if p != stack_pid]
    parts["simulator"] = procstat.cpu_seconds(me) + sum(map(procstat.tree_cpu_seconds, shards))
    return parts


class BenchmarkResult(BaseModel):
    figures: Figures
    phases: list[RolloutPhases]
    api_peak_rss_mb: float
    # The API's high-water mark when the rollout ended, every agent still connected: before the
    # simulator's figures read every job of the rollout in one admin answer (10,000 rows).
    api_fleet_peak_rss_mb: float
    # The API's RSS with no agent yet, and with every agent registered (its poll held).
    api_idle_rss_mb: float
    api_registered_rss_mb: float
    # CPU seconds each part used from the rollout's creation to its end (api, worker, temporal,
    # postgres, simulator): where the work goes. They drift with a VM's speed too, so compare
    # runs alternated back to back.
    rollout_cpu_seconds: dict[str, float]
    # The same for each batch, from the status poll that first saw it to the next's.
    batch_cpu_seconds: list[dict[str, float]]
    # With --advance: batch number → ms from sending its advance to the fleet's first handout,
    # and to the advance's answer (the update returns once the batch is written).
    advance_to_handout_ms: dict[int, float]
    advance_answered_ms: dict[int, float]
    revert: dict[str, Any] | None = None  # with --revert: the revert as GET answered it at its end


class FleetRun(BaseModel):
    figures: Figures
    api_registered_rss_mb: float
    api_fleet_peak_rss_mb: float
    rollout_cpu_seconds: dict[str, float]
    batch_cpu_seconds: list[dict[str, float]]
    # With --advance: batch number → when its advance was sent (epoch seconds), and how long
    # its answer took (ms).
    advanced_at: dict[int, float]
    advance_answered_ms: dict[int, float]
    revert: dict[str, Any] | None = None


async def benchmark(args: argparse.Namespace, data_dir: Path) -> BenchmarkResult:
    api_port = free_port()
    postgres_port = free_port()
    env = {
        **os.environ,
        "ROLLOUT_DATA_DIR": str(data_dir),
        "ROLLOUT_API_PORT": str(api_port),
        "ROLLOUT_POSTGRES_PORT": str(postgres_port),
        "ROLLOUT_TEMPORAL_PORT": str(free_port()),
        "ROLLOUT_TEMPORAL_UI_PORT": str(free_port()),
        # As an operator of this fleet would set it: every idle agent's poll held, none
        # turned into a poll a second (docs/configuration.md: mind `ulimit -n`).
        "LONG_POLL_MAX_HELD": str(max(500, args.agents + 100)),
    }
    url = f"http://127.0.0.1:{api_port}"
    with (data_dir / "stack.log").open("wb") as log:
        stack = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli.main", "dev", env=env, stdout=log, stderr=log
        )
    try:
        await wait_until_healthy(url, stack)
        secrets = dev_secrets.load_or_create(data_dir / "dev-secrets.env")
        admin_token = secrets["CONTROL_PLANE_ADMIN_TOKEN"]
        async with httpx.AsyncClient(
            base_url=url, headers={"x-cp-admin-token": admin_token}, timeout=60
        ) as admin:
            database = f"postgresql://postgres@127.0.0.1:{postgres_port}/{DEV_DATABASE}"
            idle_rss = procstat.rss_mb(api_pid(stack.pid))
            run = await run_fleet(args, url, admin, secrets, stack.pid, database)
        figures = run.figures
        # The high-water mark covers the whole run, as long as the API was never restarted.
        peak_rss = procstat.peak_rss_mb(api_pid(stack.pid))
        conn = await connect(database)
        try:
            phases = [
                await rollout_phases(conn, r.id, {b.number: b for b in r.batches})
                for r in figures.rollouts
            ]
        finally:
            await conn.close()
        return BenchmarkResult(
            figures=figures,
            phases=phases,
            api_peak_rss_mb=peak_rss,
            api_idle_rss_mb=idle_rss,
            api_registered_rss_mb=run.api_registered_rss_mb,
            api_fleet_peak_rss_mb=run.api_fleet_peak_rss_mb,
            rollout_cpu_seconds=run.rollout_cpu_seconds,
            batch_cpu_seconds=run.batch_cpu_seconds,
            advance_to_handout_ms=advance_to_handout_ms(figures, run.advanced_at),
            advance_answered_ms=run.advance_answered_ms,
            revert=run.revert,
        )
    finally:
        if stack.returncode is None:
            stack.send_signal(signal.SIGINT)
        await stack.wait()


async def run_fleet(
    args: argparse.Namespace,
    url: str,
    admin: httpx.AsyncClient,
    secrets: dict[str, str],
    stack_pid: int,
    database: str,
) -> FleetRun:
    options = SimulationOptions(
        control_plane_url=url,
        agents=args.agents,
        default_secret=secrets["CONTROL_PLANE_AGENT_TOKEN"],
        version="1.0.0",
        step_seconds=args.step_seconds,
        poll_interval=args.poll_interval,
        seed=1,
        admin_token=secrets["CONTROL_PLANE_ADMIN_TOKEN"],
        summary_interval=2.0,
        processes=args.processes,
    )
    stop = asyncio.Event()
    fleet = asyncio.create_task(simulate(options, stop=stop))
    await registered(database, args.agents, 120)
    registered_rss = procstat.rss_mb(api_pid(stack_pid))
    signing_secret = secrets["CONTROL_PLANE_RELEASE_SIGNING_SECRET"]
    if args.revert:  # what the fleet runs, uploaded: the release a revert goes back to
        await upload_release(admin, signing_secret, options.version)
    release_id = await upload_release(admin, signing_secret)
    body = {
        "manifestId": release_id,
        "channel": "stable",
        "batchSize": args.batch_size,
        "autoAdvance": not args.advance,
        "bakeSeconds": args.bake_seconds,
    }
    cpu_before = cpu_by_part(stack_pid)
    created = await admin.post("/api/rollouts", json=body)
    created.raise_for_status()
    rollout_path = f"/api/rollouts/{created.json()['id']}"
    status_path = f"{rollout_path}?jobs=none"  # polled each second: no job list to build
    advanced_at: dict[int, float] = {}
    answered_ms: dict[int, float] = {}
    finished = ("completed", "paused", "aborted")

    def to_advance_or_finished(r: dict[str, Any]) -> bool:
        awaiting = r["status"] == "awaiting_advance" and r["currentBatch"] + 1 not in advanced_at
        return r["status"] in finished or (args.advance and awaiting)

    at_batch: list[dict[str, float]] = []  # CPU seconds by part when each batch was first seen

    def note_batch(r: dict[str, Any]) -> None:
        if r["status"] in finished or r["currentBatch"] > len(at_batch):
            at_batch.append(cpu_by_part(stack_pid))

    while True:
        rollout = await wait_for(admin, status_path, to_advance_or_finished, 1800, note_batch)
        if rollout["status"] in finished:
            break
        number = rollout["currentBatch"] + 1
        advanced_at[number] = time.time()
        (await admin.post(f"{rollout_path}/advance")).raise_for_status()
        answered_ms[number] = (time.time() - advanced_at[number]) * 1000
    reverted = None
    if args.revert and rollout["status"] == "completed":
        revert_body = {"batchSize": args.batch_size, "autoAdvance": True, "restore": "not_needed"}
        started = await admin.post(f"{rollout_path}/revert", json=revert_body)
        started.raise_for_status()
        revert_path = f"/api/rollouts/{started.json()['id']}?jobs=none"
        reverted = await wait_for(admin, revert_path, lambda r: r["status"] in finished, 1800)
    cpu_after = cpu_by_part(stack_pid)
    fleet_peak_rss = procstat.peak_rss_mb(api_pid(stack_pid))
    stop.set()
    return FleetRun(
        figures=await fleet,
        api_registered_rss_mb=registered_rss,
        api_fleet_peak_rss_mb=fleet_peak_rss,
        rollout_cpu_seconds=_used(cpu_before, cpu_after),
        batch_cpu_seconds=[_used(a, b) for a, b in itertools.pairwise(at_batch)],
        advanced_at=advanced_at,
        advance_answered_ms=answered_ms,
        revert=reverted,
    )


def _used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {part: round(after[part] - before.get(part, 0.0), 2) for part in after}


def advance_to_handout_ms(figures: Figures, advanced_at: dict[int, float]) -> dict[int, float]:
    """Per advanced batch, from sending the advance to the first poll that got one of its jobs
    (both clocks are this host's)."""
    handed = {b.number: b.first_handout_at for r in figures.rollouts for b in r.batches}
    return {
        number: (handed_at.timestamp() - sent) * 1000
        for number, sent in advanced_at.items()
        if (handed_at := handed.get(number)) is not None
    }


def control_plane_figures(result: BenchmarkResult) -> str:
    """The two figures the control plane is judged by: its CPU per job (everything but the
    simulator), and its own share of the wall time: per batch, release to first handout plus
    last report to the next release, which is what the control plane adds to its agents' work."""
    jobs = sum(batch.jobs for phases in result.phases for batch in phases.batches)
    cpu = sum(s for part, s in result.rollout_cpu_seconds.items() if part != "simulator")
    lines = [
        f"control plane: {cpu / max(jobs, 1):.4f} CPU-s per job ({cpu:.1f} CPU-s, {jobs} jobs)"
    ]
    for phases in result.phases:
        if phases.finished_at is None:
            continue
        wall = (phases.finished_at - phases.created_at).total_seconds()
        own = phases.control_plane_seconds
        lines.append(
            f"rollout {phases.rollout_id}: {wall:.1f} s, of which the control plane's turnaround"
            f" {own:.1f} s ({own / wall:.1%}); slowest jobs (first to last report) summed"
            f" {phases.agents_work_seconds:.1f} s"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    # As `rollout simulate` without --verbose: the figures count what the agents would log.
    configure_logging(level=logging.WARNING)
    logging.getLogger("agent").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as data_dir:
        try:
            result = asyncio.run(benchmark(args, Path(data_dir)))
        except RuntimeError as exc:
            log = (Path(data_dir) / "stack.log").read_text(errors="replace")
            print("\n".join(log.splitlines()[-20:]), file=sys.stderr)
            raise SystemExit(f"benchmark: {exc}") from None
    if args.json:
        print(result.model_dump_json(indent=2))
        return
    print(render(result.figures))
    for phases in result.phases:
        print(render_phases(phases))
    held = (result.api_registered_rss_mb - result.api_idle_rss_mb) * 1024 / args.agents
    print(
        f"API RSS: {result.api_idle_rss_mb:.1f} MB before the fleet,"
        f" {result.api_registered_rss_mb:.1f} MB with it registered ({held:.1f} KiB per agent"
        f" connected, its poll held), peak {result.api_fleet_peak_rss_mb:.1f} MB to the rollout's"
        f" end; {result.api_peak_rss_mb:.1f} MB once the figures had read every job in one answer"
    )
    cpu = result.rollout_cpu_seconds
    each = ", ".join(f"{part} {seconds:.1f}" for part, seconds in sorted(cpu.items()))
    total = sum(cpu.values())
    print(f"CPU seconds from the rollout's creation to its end: {each}; total {total:.1f}")
    print(control_plane_figures(result))
    if result.batch_cpu_seconds:
        each = ", ".join(
            f"{sum(s for p, s in used.items() if p != 'simulator'):.1f}/{used['simulator']:.1f}"
            for used in result.batch_cpu_seconds
        )
        print(f"CPU seconds per batch, control plane/simulator: {each}")
    if result.revert is not None:
        revert = result.revert
        took = datetime.fromisoformat(revert["finishedAt"]) - datetime.fromisoformat(
            revert["createdAt"]
        )
        print(
            f"revert {revert['id']}: {revert['status']}, {revert['counts']} back to"
            f" {revert['version']} in {revert['totalBatches']} batches,"
            f" {took.total_seconds():.1f} s from its creation to its end"
        )
    if result.advance_to_handout_ms:
        each = ", ".join(f"{ms:.0f}" for ms in result.advance_to_handout_ms.values())
        print(f"advance → first handout, batch 2 on (ms): {each}")
        each = ", ".join(f"{ms:.0f}" for ms in result.advance_answered_ms.values())
        print(f"advance → its answer, batch 2 on (ms): {each}")


if __name__ == "__main__":
    main()
