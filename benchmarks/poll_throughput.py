"""Benchmark: idle signed polls per second against a bare FastAPI endpoint, in the same run.

    .venv/bin/python -m benchmarks.poll_throughput --seconds 10 --rounds 2

Starts, on free loopback ports in a temp folder: PostgreSQL (embedded, durable like `rollout dev`),
one real `rollout api` process (one uvicorn process; Temporal is not needed for an idle poll and
is left unreachable) and one bare FastAPI process (benchmarks/bare_app.py). The same load
generator (benchmarks/loadgen.py) drives both in turn, alternating for `--rounds`, so machine
load drifts over both alike. Counted: 200 answers only, for the real poll only those with a valid
response signature echoing the nonce. Printed: req/s, p50/p99 latency, each server's CPU share,
the generator's own CPU share and loop lag per process, the ratio, and the API's RSS.
Not a test: numbers depend on the machine.
"""

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import BaseModel

from benchmarks import procstat
from benchmarks.loadgen import LoadGenerator, LoadPlan
from devstack.ports import free_port
from devstack.postgres import EmbeddedPostgres
from devstack.stack import ensure_database
from simulator.figures import Latency, latency

START_SECONDS = 60.0
POLL_PATH = "/api/updates/next"
# Above this share of one core in the window, a generator process is saturated: its figure is a
# lower bound of what the server can do.
GENERATOR_SATURATED = 0.9


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10.0, help="measured window per target")
    p.add_argument("--warmup", type=float, default=2.0, help="load before each window")
    p.add_argument("--rounds", type=int, default=2, help="bare, poll, bare, poll, ...")
    p.add_argument("--processes", type=int, default=os.cpu_count() or 2, help="generator")
    p.add_argument("--connections", type=int, default=32, help="in total, like wrk -c")
    p.add_argument("--instances", type=int, default=1000, help="instance ids polled")
    p.add_argument("--no-fsync", action="store_true", help="PostgreSQL without fsync")
    p.add_argument("--json", action="store_true")
    return p.parse_args()


@dataclass(frozen=True)
class Server:
    name: str
    port: int
    process: asyncio.subprocess.Process
    signed: bool


class GeneratorProcess(BaseModel):
    cpu_share: float
    loop_lag: Latency


class Measurement(BaseModel):
    round: int
    target: str
    requests_per_second: float
    ok: int
    refused: dict[str, int]
    latency: Latency
    server_cpu_share: float
    server_rss_mb: float
    generator: list[GeneratorProcess]

    @property
    def generator_saturated(self) -> bool:
        return any(g.cpu_share >= GENERATOR_SATURATED for g in self.generator)


class Report(BaseModel):
    machine: dict[str, str]
    seconds: float
    connections: int
    processes: int
    measurements: list[Measurement]
    ratios: list[float]
    ratio_median: float
    api_rss_mb: float
    api_peak_rss_mb: float


async def start(argv: list[str], env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=out, stderr=out, stdin=asyncio.subprocess.DEVNULL
        )


async def wait_answering(url: str, process: asyncio.subprocess.Process, log: Path) -> None:
    """Any HTTP answer will do: the server is up. There is no event to await across processes."""
    deadline = time.monotonic() + START_SECONDS
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                text = await asyncio.to_thread(log.read_text, errors="replace")
                tail = "\n".join(text.splitlines()[-10:])
                raise RuntimeError(f"{url} exited with {process.returncode}:\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                await client.get(url)
                return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {START_SECONDS:g} s")


async def measure(
    args: argparse.Namespace, server: Server, secret: str, number: int
) -> Measurement:
    processes = max(1, args.processes)
    plan = LoadPlan(
        host="127.0.0.1",
        port=server.port,
        path=POLL_PATH,
        secret=secret,
        processes=processes,
        connections_per_process=max(1, args.connections // processes),
        verify_signature=server.signed,
        instances=args.instances,
    )
    generator = LoadGenerator(plan)
    await asyncio.to_thread(generator.start)
    window = generator.go(args.warmup, args.seconds)
    pid = server.process.pid
    await asyncio.sleep(max(0.0, window.measure_from - time.time()))
    cpu_from = procstat.cpu_seconds(pid)
    rss = 0.0
    while time.time() < window.measure_until:
        rss = max(rss, procstat.rss_mb(pid))
        await asyncio.sleep(min(0.5, max(0.0, window.measure_until - time.time())))
    server_cpu = procstat.cpu_seconds(pid) - cpu_from
    results = await asyncio.to_thread(generator.results)
    ok = sum(r.ok for r in results)
    refused: dict[str, int] = {}
    for r in results:
        for reason, count in r.refused.items():
            refused[reason] = refused.get(reason, 0) + count
    return Measurement(
        round=number,
        target=server.name,
        requests_per_second=round(ok / window.seconds, 1),
        ok=ok,
        refused=refused,
        latency=latency([s for r in results for s in r.latencies]),
        server_cpu_share=round(server_cpu / window.seconds, 3),
        server_rss_mb=rss,
        generator=[
            GeneratorProcess(
                cpu_share=round(r.cpu_seconds / r.window_seconds, 3), loop_lag=latency(r.loop_lag)
            )
            for r in results
        ],
    )


def machine() -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), "?")
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cores": str(os.cpu_count()),
        "cpu": model,
        "memory": f"{memory_kib / 1024 / 1024:.1f} GiB",
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


async def benchmark(args: argparse.Namespace, folder: Path) -> Report:
    facts = machine()
    postgres = EmbeddedPostgres(folder / "postgres", free_port(), durable=not args.no_fsync)
    await asyncio.to_thread(postgres.start)
    servers: list[Server] = []
    try:
        database_url = await ensure_database(postgres)
        agent_token = secrets.token_hex(32)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CONTROL_PLANE_")},
            "DATABASE_URL": database_url,
            "CONTROL_PLANE_ADMIN_TOKEN": secrets.token_hex(32),
            "CONTROL_PLANE_RELEASE_SIGNING_SECRET": secrets.token_hex(32),
            "CONTROL_PLANE_AGENT_TOKEN": agent_token,
            # Nothing listens there: an idle poll never asks Temporal, and the API connects lazily.
            "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
        }
        python = sys.executable
        for name, module, signed, probe in (
            ("bare FastAPI", ["-m", "benchmarks.bare_app"], False, "/docs"),
            ("signed poll", ["-m", "cli.main", "api"], True, "/health/live"),
        ):
            port = free_port()
            log = folder / f"{module[1]}.log"
            process = await start([python, *module, "--port", str(port)], env, log)
            servers.append(Server(name, port, process, signed))
            await wait_answering(f"http://127.0.0.1:{port}{probe}", process, log)
        measurements = []
        for number in range(1, args.rounds + 1):
            for server in servers:
                measured = await measure(args, server, agent_token, number)
                print(row(measured), file=sys.stderr, flush=True)
                measurements.append(measured)
        api_pid = servers[1].process.pid
        api_rss, api_peak = procstat.rss_mb(api_pid), procstat.peak_rss_mb(api_pid)
    finally:
        for server in servers:
            if server.process.returncode is None:
                server.process.send_signal(signal.SIGINT)
            await server.process.wait()
        await asyncio.to_thread(postgres.stop)
    ratios = [
        round(poll.requests_per_second / bare.requests_per_second, 3)
        for bare, poll in zip(measurements[::2], measurements[1::2], strict=True)
        if bare.requests_per_second > 0
    ]
    return Report(
        machine=facts,
        seconds=args.seconds,
        connections=args.connections,
        processes=args.processes,
        measurements=measurements,
        ratios=ratios,
        ratio_median=round(statistics.median(ratios), 3) if ratios else 0.0,
        api_rss_mb=api_rss,
        api_peak_rss_mb=api_peak,
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def row(m: Measurement) -> str:
    generator = ", ".join(
        f"{g.cpu_share:.0%} lag {_ms(g.loop_lag.p50_ms)}/{_ms(g.loop_lag.p99_ms)} ms"
        for g in m.generator
    )
    refused = ", ".join(f"{n} {k}" for k, n in sorted(m.refused.items())) or "none"
    flag = "  GENERATOR SATURATED: a lower bound" if m.generator_saturated else ""
    return (
        f"round {m.round}  {m.target:<12} {m.requests_per_second:>9,.1f} req/s"
        f"  p50 {_ms(m.latency.p50_ms)} ms  p99 {_ms(m.latency.p99_ms)} ms"
        f"  server CPU {m.server_cpu_share:.0%}  refused: {refused}"
        f"  generator (CPU, lag p50/p99): {generator}{flag}"
    )


def render(report: Report) -> str:
    facts = report.machine
    lines = [
        f"{facts['date']} · {facts['cores']} cores · {facts['cpu']} · {facts['memory']}"
        f" · load average {facts['load_average']} (at start)",
        f"{report.processes} generator processes, {report.connections} connections in total,"
        f" {report.seconds:g} s measured per target",
        *(row(m) for m in report.measurements),
        "ratio signed poll / bare FastAPI: "
        + ", ".join(f"{r:.3f}×" for r in report.ratios)
        + f" (median {report.ratio_median:.3f}×)",
        f"API RSS {report.api_rss_mb:.1f} MB at the end, peak {report.api_peak_rss_mb:.1f} MB",
    ]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="poll-bench-") as folder:
        try:
            report = asyncio.run(benchmark(args, Path(folder)))
        except RuntimeError as exc:
            raise SystemExit(f"benchmark: {exc}") from None
    print(report.model_dump_json(indent=2) if args.json else render(report))


if __name__ == "__main__":
    main()
