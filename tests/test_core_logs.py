"""The Temporal SDK core's own log lines (a call retried while Temporal is gone) go through the
process's logging: under LOG_FORMAT=json every line of a worker's log is JSON, and none carries
an ANSI escape sequence (the core wrote them coloured, straight to stderr)."""

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from devstack.ports import free_port
from devstack.temporal import TemporalDevServer
from tests.fixtures_temporal import eventually

# Starts a Temporal dev server and a worker process (tests/tiers.py).
pytestmark = pytest.mark.servers


async def test_core_lines_of_a_worker_losing_temporal_are_json_without_escapes(
    tmp_path: Path, database_url: str
) -> None:
    server = TemporalDevServer(tmp_path / "temporal", free_port(), free_port())
    temporal = await asyncio.create_subprocess_exec(
        *server.argv(), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    log_file = tmp_path / "worker.log"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "TEMPORAL_ADDRESS": server.address,
        "LOG_FORMAT": "json",
    }
    env.pop("WORKER_METRICS_ADDRESS", None)
    try:
        await server.wait_ready()
        with log_file.open("wb") as log:
            worker = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cli.main", "worker", env=env, stdout=log, stderr=log
            )
        try:

            async def polling() -> bool:
                return b"worker polling task queue" in log_file.read_bytes()

            await eventually(polling)
            temporal.kill()
            await temporal.wait()

            async def core_line() -> bool:  # the core retries its polls for some seconds first
                return b'"temporalio.core"' in log_file.read_bytes()

            await eventually(core_line, timeout=90, interval=0.2)
        finally:
            worker.kill()
            await worker.wait()
    finally:
        if temporal.returncode is None:
            temporal.kill()
            await temporal.wait()
    text = log_file.read_bytes()
    assert b"\x1b" not in text
    lines = [json.loads(line) for line in text.decode().splitlines()]
    core = [line for line in lines if line["logger"] == "temporalio.core"]
    assert core and all(line["level"] == "warning" for line in core)
    assert "gRPC call" in core[0]["msg"]  # a call retried while Temporal is gone
