"""`rollout api --workers N`: N processes share one port, each builds its own app from the
environment, and one that dies is replaced while the others keep answering."""

import os
import re
import signal
import subprocess
import sys

import httpx
import pytest

from devstack.ports import free_port
from server.settings import ApiSettings
from tests.control_plane_processes import READY_API, api_process, process_env

SERVER_PROCESS = re.compile(r"Started server process \[(\d+)\]")


async def test_two_api_processes_serve_one_port_and_a_dead_one_is_replaced(
    settings: ApiSettings,
) -> None:
    port = free_port()
    async with (
        api_process(process_env(settings), port, workers=2) as api,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
    ):
        servers = {int(m.group(1)) for line in api.lines if (m := SERVER_PROCESS.search(line))}
        assert len(servers) == 2 and api.process.pid not in servers, api.log()

        os.kill(servers.pop(), signal.SIGKILL)
        assert (await client.get("/version")).status_code == 200  # the other one answers
        await api.wait_for_line(READY_API, count=3)  # the supervisor started a replacement
        replaced = {int(m.group(1)) for line in api.lines if (m := SERVER_PROCESS.search(line))}
        assert len(replaced) == 3


@pytest.mark.servers  # runs `rollout api` (tests/tiers.py)
def test_workers_must_be_a_positive_count() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "api", "--workers", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "--workers" in result.stderr and "must be 1 or more" in result.stderr
