"""Real agent processes for tests: `rollout agent` as a subprocess with its env, a state dir in
tmp, and UPDATE_*_CMD shell scripts that append "<step> <version>" lines to a file.

`agent_host(control_plane_url, secret, ...)` works against the fake control plane and against the
real API alike. A step can be made to fail (`fail_at`) or to block the first time it runs until
the test opens a gate (`block_at`), so a test can kill or stop the agent mid-step. `switch` and
`rollback` write the version the host runs into a `current` file, and a step that starts while
another one still runs adds an "overlap" line to the steps file: the host's own view of the truth.
Through `extra_env`: AGENT_TEST_IGNORE_TERM=1 makes steps ignore SIGTERM,
AGENT_TEST_BACKGROUND_AT=<step> makes that step leave a process running in the background, and
AGENT_TEST_STEP_SECONDS=<s> makes every step take that long (before its gate and its effect), as
real steps do: a report's answer then reaches the agent while the step it announced runs.
With `permissions_apply`, an agent started by root runs without the capabilities that let root
ignore file permissions, so a chmod makes its state directory read-only to it, as to an agent
running as another user.
"""

import asyncio
import contextlib
import ctypes
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
# step.sh <step>: record the step, optionally block on a gate file (the first time the step
# runs), optionally fail; switch and rollback set the version the host runs in `current`.
step="$1"
dir=$(dirname "$AGENT_TEST_STEPS_FILE")
echo "$step $UPDATE_VERSION" >> "$AGENT_TEST_STEPS_FILE"
# Another step still running now (a killed agent's orphan) would be a step on top of a step.
other=$(cat "$dir/running" 2>/dev/null)
state=$(sed 's/.*) //' "/proc/$other/stat" 2>/dev/null | cut -c1)
if [ -n "$other" ] && [ -n "$state" ] && [ "$state" != Z ]; then
  echo "overlap: $step started while pid $other still runs" >> "$AGENT_TEST_STEPS_FILE"
fi
echo $$ > "$dir/running"
if [ -n "$AGENT_TEST_IGNORE_TERM" ]; then trap '' TERM; fi
if [ "$step" = "$AGENT_TEST_BACKGROUND_AT" ]; then
  sleep 600 > /dev/null 2>&1 &
  echo $! > "$dir/background.pid"
fi
echo "running $step for $UPDATE_VERSION (previous $UPDATE_PREVIOUS_VERSION)"
if [ -n "$AGENT_TEST_STEP_SECONDS" ]; then sleep "$AGENT_TEST_STEP_SECONDS"; fi
if [ "$step" = "$AGENT_TEST_BLOCK_AT" ] && [ ! -e "$dir/blocked-$step" ]; then
  touch "$dir/blocked-$step"
  while [ ! -e "$AGENT_TEST_GATE" ]; do sleep 0.05; done
fi
case " $AGENT_TEST_FAIL_AT " in
  *" $step "*) echo "$step broke on purpose" >&2; rm -f "$dir/running"; exit 3 ;;
esac
case "$step" in
  switch) echo "$UPDATE_VERSION" > "$dir/current" ;;
  rollback) echo "$UPDATE_PREVIOUS_VERSION" > "$dir/current" ;;
esac
rm -f "$dir/running"
exit 0
"""
STEPS_WITH_COMMANDS = ("backup", "pull", "migrate", "smoke", "switch", "rollback")


# prctl(PR_CAPBSET_DROP, cap): gone from the bounding set, a capability is not in the permitted
# set of what the process executes next, root's programs included.
_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _CAP_FOWNER = 1, 2, 3


def _permissions_apply() -> None:
    """preexec_fn: root's next program is held to file permissions like any user's."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    for capability in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _CAP_FOWNER):
        if prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _processes() -> dict[int, list[str]]:
    """pid -> the fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, ...)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            found[int(entry.name)] = stat.rsplit(")", 1)[1].split()
    return found


def _children(pid: int) -> list[int]:
    return [child for child, fields in _processes().items() if int(fields[1]) == pid]


def alive(pids: set[int]) -> set[int]:
    """Those of `pids` still running (a zombie has ended, only its parent has not looked yet)."""
    return {pid for pid, fields in _processes().items() if pid in pids and fields[0] != "Z"}


class AgentHost:
    """One agent process and the files its step commands write."""

    def __init__(self, workdir: Path, env: dict[str, str], *, permissions_apply: bool) -> None:
        self.workdir = workdir
        self.env = env
        self.permissions_apply = permissions_apply and os.geteuid() == 0
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
                preexec_fn=_permissions_apply if self.permissions_apply else None,
            )

    def steps(self) -> list[str]:
        return self.steps_file.read_text().splitlines() if self.steps_file.exists() else []

    def state(self) -> dict[str, Any]:
        return json.loads((self.state_dir / "state.json").read_text())

    def current(self) -> str:
        """The version the host runs, as its own switch and rollback commands wrote it."""
        return (self.workdir / "current").read_text().strip()

    def step_processes(self) -> set[int]:
        """Every process in the process groups of the agent's running steps."""
        assert self.process is not None
        groups = set(_children(self.process.pid))
        return {pid for pid, fields in _processes().items() if int(fields[2]) in groups}

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def open_gate(self) -> None:
        self.gate.touch()

    async def wait_for_step(self, line: str, timeout: float = 60) -> None:
        """Poll the steps file (a shell script gives no event to await) until `line` appears."""
        async with asyncio.timeout(timeout):
            while line not in self.steps():
                await asyncio.sleep(0.02)

    async def wait_blocked(self, step: str, timeout: float = 60) -> None:
        """Until `step` waits at the gate (no event to await from a shell script either)."""
        async with asyncio.timeout(timeout):
            while not (self.workdir / f"blocked-{step}").exists():
                await asyncio.sleep(0.02)

    async def wait_exit(self, timeout: float = 60) -> int:
        assert self.process is not None
        return await asyncio.wait_for(self.process.wait(), timeout)

    def send(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    async def kill_agent_only(self) -> None:
        """`kill -9` of the agent alone: its running step goes on, orphaned."""
        assert self.process is not None
        self.process.kill()
        await self.process.wait()

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
        permissions_apply: bool = False,
    ) -> AgentHost:
        workdir = tmp_path / f"{instance_id}-{len(hosts)}"
        workdir.mkdir()
        script = workdir / "step.sh"
        script.write_text(STEP_SCRIPT)
        (workdir / "current").write_text(f"{current_version}\n")
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
        host = AgentHost(workdir, env, permissions_apply=permissions_apply)
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
