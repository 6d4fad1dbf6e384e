"""Real agent processes for tests: `rollout agent` as a subprocess with its env, a state dir in
tmp, and UPDATE_*_CMD shell scripts that append "<step> <version>" lines to a file.

`agent_host(control_plane_url, secret, ...)` works against the fake control plane and against the
real API alike. A step can be made to fail (`fail_at`) or to block until the test opens a gate
(`block_at`), so a test can kill or stop the agent mid-step.
"""

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from devstack.ports import free_port
from tests.conftest import LiveServer
from tests.fake_control_plane import FakeControlPlane

STEP_SCRIPT = """#!/bin/sh
# step.sh <step>: record the step, optionally block on a gate file, optionally fail.
step="$1"
echo "$step $UPDATE_VERSION" >> "$AGENT_TEST_STEPS_FILE"
echo "running $step for $UPDATE_VERSION (previous $UPDATE_PREVIOUS_VERSION)"
if [ "$step" = "$AGENT_TEST_BLOCK_AT" ]; then
  while [ ! -e "$AGENT_TEST_GATE" ]; do sleep 0.05; done
fi
case " $AGENT_TEST_FAIL_AT " in
  *" $step "*) echo "$step broke on purpose" >&2; exit 3 ;;
esac
exit 0
"""
STEPS_WITH_COMMANDS = ("backup", "pull", "migrate", "smoke", "switch", "rollback")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


class AgentHost:
    """One agent process and the files its step commands write."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.state_dir = Path(env["AGENT_STATE_DIR"])
        self.steps_file = Path(env["AGENT_TEST_STEPS_FILE"])
        self.gate = Path(env["AGENT_TEST_GATE"])
        self.log_file = workdir / "agent.log"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log_file.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).parent / "rollout"),
                "agent",
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def steps(self) -> list[str]:
        return self.steps_file.read_text().splitlines() if self.steps_file.exists() else []

    def state(self) -> dict[str, Any]:
        return json.loads((self.state_dir / "state.json").read_text())

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def open_gate(self) -> None:
        self.gate.touch()

    async def wait_for_step(self, line: str, timeout: float = 15) -> None:
        """Poll the steps file (a shell script gives no event to await) until `line` appears."""
        async with asyncio.timeout(timeout):
            while line not in self.steps():
                await asyncio.sleep(0.02)

    async def wait_exit(self, timeout: float = 15) -> int:
        assert self.process is not None
        return await asyncio.wait_for(self.process.wait(), timeout)

    def send(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    async def kill_hard(self) -> None:
        """SIGKILL the agent and its step process groups, as systemd kills a unit's cgroup."""
        assert self.process is not None
        if self.process.returncode is not None:
            return
        children = _children(self.process.pid)
        self.process.kill()
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child, signal.SIGKILL)
        await self.process.wait()


AgentFactory = Callable[..., Awaitable[AgentHost]]


@pytest.fixture
async def agent_host(tmp_path: Path) -> AsyncIterator[AgentFactory]:
    """Factory: `await agent_host(url, secret, instance_id=..., fail_at=..., block_at=...)`."""
    hosts: list[AgentHost] = []

    async def start(
        control_plane_url: str,
        secret: str,
        *,
        instance_id: str = "host-1",
        current_version: str = "1.0.0",
        channel: str = "stable",
        fail_at: str = "",
        block_at: str = "",
        rollback: bool = True,
        extra_env: dict[str, str] | None = None,
    ) -> AgentHost:
        workdir = tmp_path / f"{instance_id}-{len(hosts)}"
        workdir.mkdir()
        script = workdir / "step.sh"
        script.write_text(STEP_SCRIPT)
        env = {
            "PATH": os.environ["PATH"],
            "CONTROL_PLANE_URL": control_plane_url,
            "AGENT_INSTANCE_ID": instance_id,
            "AGENT_SECRET": secret,
            "AGENT_CHANNEL": channel,
            "AGENT_CURRENT_VERSION": current_version,
            "AGENT_STATE_DIR": str(workdir / "state"),
            "AGENT_POLL_INTERVAL": "0.2",
            "AGENT_BACKOFF_INITIAL": "0.1",
            "AGENT_BACKOFF_MAX": "0.8",
            "UPDATE_STEP_TIMEOUT": "30",
            "AGENT_TEST_STEPS_FILE": str(workdir / "steps.log"),
            "AGENT_TEST_GATE": str(workdir / "gate"),
            "AGENT_TEST_FAIL_AT": fail_at,
            "AGENT_TEST_BLOCK_AT": block_at,
        }
        for step in STEPS_WITH_COMMANDS:
            if step != "rollback" or rollback:
                env[f"UPDATE_{step.upper()}_CMD"] = f"sh {script} {step}"
        env.update(extra_env or {})
        host = AgentHost(workdir, env)
        hosts.append(host)
        await host.start()
        return host

    yield start
    for host in hosts:
        host.open_gate()
        await host.kill_hard()


@pytest.fixture
async def fake_control_plane() -> AsyncIterator[tuple[FakeControlPlane, str]]:
    """The fake and its URL, serving in the test's loop."""
    plane = FakeControlPlane(secret=secrets.token_hex(16))
    async with LiveServer(plane.app(), free_port()) as server:
        yield plane, server.url
