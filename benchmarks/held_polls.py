"""Benchmark: what a connected agent costs the API's memory, as an open connection and then with
its poll held.

    .venv/bin/python -m benchmarks.held_polls --agents 10000

Starts an embedded PostgreSQL and one `rollout api` (holding up to `--agents` polls; Temporal is
not needed), then from this process opens `--agents` keep-alive connections that send nothing,
and on each a signed poll asking to be held (`x-agent-poll-wait`), as an idle fleet does. The
first poll of each instance registers it, as a new agent's does. Printed: the API's RSS idle,
with the connections open, with every poll held (read from the API's `rollout_held_polls`
gauge), and the KiB each step costs per agent; then once every agent has hung up, and the API's
peak RSS. Not a test.
"""

import argparse
import asyncio
import hmac
import json
import os
import re
import resource
import secrets
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import uvloop

from benchmarks import procstat
from benchmarks.poll_throughput import machine, start, wait_answering
from contract.long_poll import POLL_WAIT_HEADER
from devstack.ports import free_port
from devstack.postgres import EmbeddedPostgres
from devstack.stack import ensure_database

HOLD_SECONDS = 300  # longer than the benchmark: every poll stays held until it hangs up
SETTLE_SECONDS = 120.0
_HELD = re.compile(r"^rollout_held_polls(?:\{[^}]*\})? ([0-9.e+]+)$", re.MULTILINE)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=10_000)
    return p.parse_args()


class _Agent(asyncio.Protocol):
    """One connection: a signed poll when asked, and whatever comes back is counted."""

    def __init__(self, answered: list[int]) -> None:
        self.transport: asyncio.Transport | None = None
        self.answered = answered

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def poll(self, secret: bytes, instance: str) -> None:
        assert self.transport is not None
        sent_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = json.dumps(
            {
                "channel": "stable",
                "currentVersion": "1.0.0",
                "instanceId": instance,
                "nonce": secrets.token_hex(16),
                "sentAt": sent_at,
            },
            separators=(",", ":"),
        ).encode()
        signature = hmac.digest(secret, body, "sha256").hex()
        self.transport.write(
            f"POST /api/updates/next HTTP/1.1\r\nhost: bench\r\n"
            f"content-type: application/json\r\n{POLL_WAIT_HEADER}: {HOLD_SECONDS}\r\n"
            f"x-agent-signature: {signature}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            + body
        )

    def data_received(self, data: bytes) -> None:
        self.answered[0] += 1  # a held poll is never answered: this counts the surprises


async def _until_held(client: httpx.AsyncClient, count: int) -> None:
    """Until the API holds `count` polls, by its gauge: another process, no event to await."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        found = _HELD.search((await client.get("/metrics")).text)
        held = int(float(found.group(1))) if found else 0
        if held == count:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{held} polls held, not {count}")
        await asyncio.sleep(0.5)


async def _settled(pid: int) -> float:
    """The RSS once it has stopped moving for a second: the API has taken in what was sent."""
    last = procstat.rss_mb(pid)
    while True:
        await asyncio.sleep(1.0)
        now = procstat.rss_mb(pid)
        if abs(now - last) < 0.5:
            return now
        last = now


async def benchmark(args: argparse.Namespace, folder: Path) -> list[str]:
    lines = [" · ".join(f"{k} {v}" for k, v in machine().items())]
    postgres = EmbeddedPostgres(folder / "postgres", free_port(), durable=False)
    await asyncio.to_thread(postgres.start)
    process = None
    try:
        token = secrets.token_hex(32)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CONTROL_PLANE_")},
            "DATABASE_URL": await ensure_database(postgres),
            "CONTROL_PLANE_ADMIN_TOKEN": secrets.token_hex(32),
            "CONTROL_PLANE_RELEASE_SIGNING_SECRET": secrets.token_hex(32),
            "CONTROL_PLANE_AGENT_TOKEN": token,
            "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
            "LONG_POLL_MAX_SECONDS": str(HOLD_SECONDS),
            "LONG_POLL_MAX_HELD": str(args.agents + 10),
        }
        port = free_port()
        log = folder / "api.log"
        process = await start(
            [sys.executable, "-m", "cli.main", "api", "--port", str(port)], env, log
        )
        base = f"http://127.0.0.1:{port}"
        await wait_answering(f"{base}/health/live", process, log)
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            idle = await _settled(process.pid)
            lines.append(f"API RSS idle                         {idle:7.1f} MB")
            loop = asyncio.get_running_loop()
            answered = [0]
            agents: list[_Agent] = []
            for _ in range(args.agents):
                _, agent = await loop.create_connection(lambda: _Agent(answered), "127.0.0.1", port)
                agents.append(agent)
            await client.get("/health/live")  # accepted after every connection above
            connected = await _settled(process.pid)
            per_connection = (connected - idle) * 1024 / args.agents
            lines.append(
                f"{args.agents:,} connections open           {connected:7.1f} MB"
                f"  ({per_connection:.1f} KiB each)"
            )
            key = token.encode()
            for number, agent in enumerate(agents):
                agent.poll(key, f"held-{number:06d}")
            await _until_held(client, args.agents)
            holding = await _settled(process.pid)
            per_hold = (holding - connected) * 1024 / args.agents
            lines.append(
                f"{args.agents:,} polls held                 {holding:7.1f} MB"
                f"  ({per_hold:.1f} KiB each over its connection,"
                f" {per_connection + per_hold:.1f} KiB an agent)"
            )
            early = answered[0]
            for agent in agents:
                if agent.transport is not None:
                    agent.transport.close()
            await _until_held(client, 0)
            gone = await _settled(process.pid)
            lines.append(f"every agent hung up                  {gone:7.1f} MB")
            lines.append(
                f"API peak RSS                         {procstat.peak_rss_mb(process.pid):7.1f} MB"
                f"  ({early} polls answered early)"
            )
    finally:
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGINT)
            await process.wait()
        await asyncio.to_thread(postgres.stop)
    return lines


def main() -> None:
    args = parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.agents + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.agents + 1000), hard))
    with tempfile.TemporaryDirectory(prefix="held-polls-") as folder:
        try:
            lines = uvloop.run(benchmark(args, Path(folder)))
        except RuntimeError as exc:
            raise SystemExit(f"benchmark: {exc}") from None
    print("\n".join(lines))


if __name__ == "__main__":
    main()
