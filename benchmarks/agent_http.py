"""Benchmark: the agent side's CPU per request, through httpx and through the agent's own HTTP/1.1
(agent/network.py), alternated in the same run.

    .venv/bin/python -m benchmarks.agent_http --seconds 6 --rounds 3

Starts the bare FastAPI endpoint (benchmarks/bare_app.py) on a free loopback port; then, in this
process, `--clients` keep-alive clients each post a poll-sized JSON body in a loop, one request
in flight each, as agents do. Printed per round and client: requests per second and this
process's CPU milliseconds per request (what one request costs every agent, and a simulator
per agent). Not a test: numbers depend on the machine.
"""

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from agent.daemon import CONNECTION_LIFETIME
from agent.network import ControlPlaneHttp, DirectHttp, HttpxHttp
from benchmarks.poll_throughput import machine, start, wait_answering
from devstack.ports import free_port

BODY = b'{"channel":"stable","currentVersion":"1.0.0","agentVersion":"0.1.0"}'
HEADERS = {"content-type": "application/json"}
LIMITS = httpx.Limits(keepalive_expiry=CONNECTION_LIFETIME)
CLIENTS: dict[str, Callable[[str], ControlPlaneHttp]] = {
    "httpx": lambda url: HttpxHttp(httpx.AsyncClient(base_url=url, limits=LIMITS)),
    "direct": lambda url: DirectHttp(url, timeout=30, keepalive_expiry=CONNECTION_LIFETIME),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=6.0, help="measured window per transport")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=3, help="httpx, direct, httpx, ...")
    p.add_argument("--clients", type=int, default=20)
    return p.parse_args()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(url: str, client_name: str, args: argparse.Namespace) -> tuple[float, float]:
    """(requests per second, CPU ms per request) over the window."""
    done = 0
    stop = asyncio.Event()

    async def client() -> None:
        nonlocal done
        http = CLIENTS[client_name](url)
        try:
            while not stop.is_set():
                answer = await http.post("/api/updates/next", BODY, HEADERS)
                if not answer.is_success:
                    raise RuntimeError(f"HTTP {answer.status}")
                done += 1
        finally:
            await http.aclose()

    clients = [asyncio.create_task(client()) for _ in range(args.clients)]
    await asyncio.sleep(args.warmup)
    first, cpu, started = done, cpu_seconds(), time.monotonic()
    await asyncio.sleep(args.seconds)
    count, cpu, elapsed = done - first, cpu_seconds() - cpu, time.monotonic() - started
    stop.set()
    await asyncio.gather(*clients)
    return count / elapsed, cpu / count * 1000


async def benchmark(args: argparse.Namespace, folder: Path) -> dict[str, list[float]]:
    port = free_port()
    server = await start(
        [sys.executable, "-m", "benchmarks.bare_app", "--port", str(port)],
        dict(os.environ),
        folder / "bare_app.log",
    )
    url = f"http://127.0.0.1:{port}"
    costs: dict[str, list[float]] = {name: [] for name in CLIENTS}
    try:
        await wait_answering(f"{url}/docs", server, folder / "bare_app.log")
        for round_number in range(1, args.rounds + 1):
            for name in CLIENTS:
                rate, cost = await measure(url, name, args)
                costs[name].append(cost)
                print(f"round {round_number}  {name:8s} {rate:7.0f} req/s  {cost:5.2f} ms CPU/req")
    finally:
        server.terminate()
        await server.wait()
    return costs


def main() -> None:
    args = parse_args()
    print(" · ".join(f"{k} {v}" for k, v in machine().items()))
    with tempfile.TemporaryDirectory(prefix="agent-http-") as folder:
        costs = asyncio.run(benchmark(args, Path(folder)))
    medians = {name: statistics.median(values) for name, values in costs.items()}
    print(
        "median CPU per request: "
        + ", ".join(f"{name} {value:.2f} ms" for name, value in medians.items())
        + f"; direct/httpx {medians['direct'] / medians['httpx']:.2f}×"
    )


if __name__ == "__main__":
    main()
