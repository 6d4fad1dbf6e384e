"""What a job's steps do, behind one interface, so a fleet simulator can plug in its own.

The default `ShellExecutor` runs UPDATE_*_CMD with `sh -c` in its own process group (a timeout
kills the whole group), every process of it holding the step lock (agent/step_lock.py), and
checks UPDATE_HEALTHCHECK_URL with retries until a deadline.
"""

import asyncio
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from agent.config import AgentConfig, HealthCheck
from agent.step_lock import KILL_GRACE_SECONDS, step_ended, step_lock
from contract.manifest import ReleaseManifest
from contract.text import storable
from contract.wire import Step

# What a step's output is kept of: its start (what ran) and its end (how it ended).
OUTPUT_HEAD_BYTES = 4 * 1024
OUTPUT_TAIL_BYTES = 16 * 1024
# One hanging health request must not use up every attempt.
HEALTH_REQUEST_SECONDS = 10.0
# The step env carries the release, never the agent's own secret.
_WITHHELD_ENV = ("AGENT_SECRET",)


@dataclass(frozen=True)
class StepContext:
    job_id: str
    manifest: ReleaseManifest
    previous_version: str
    # A fleet revert's job goes down (UPDATE_REVERT=true); one that restores data passes the
    # backup its host took before going up to `previous_version` (UPDATE_BACKUP_REF).
    revert: bool = False
    backup_ref: str | None = None

    def env(self) -> dict[str, str]:
        env = {
            "UPDATE_VERSION": self.manifest.version,
            "UPDATE_SHA": self.manifest.sha,
            "UPDATE_CHANNEL": self.manifest.channel,
            "UPDATE_PREVIOUS_VERSION": self.previous_version,
            "UPDATE_MIGRATIONS_REQUIRED": "true" if self.manifest.migrations_required else "false",
            "UPDATE_JOB_ID": self.job_id,
            "UPDATE_REVERT": "true" if self.revert else "false",
        }
        if self.backup_ref is not None:
            env["UPDATE_BACKUP_REF"] = self.backup_ref
        return env


@dataclass(frozen=True)
class StepResult:
    ok: bool
    summary: str
    output: str = ""


class StepExecutor(Protocol):
    @property
    def can_roll_back(self) -> bool: ...

    @property
    def can_restore(self) -> bool: ...

    async def run(self, step: Step, context: StepContext) -> StepResult:
        """Run backup, pull, restore, migrate, smoke, switch, health or rollback."""


async def _stop_group(process: asyncio.subprocess.Process) -> None:
    """SIGTERM the step's process group, SIGKILL what is left after a grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            await asyncio.wait_for(process.wait(), KILL_GRACE_SECONDS)
            return
        except TimeoutError:
            continue


def _decoded(output: bytes | bytearray) -> str:
    """Step output is free text: undecodable bytes and NULs must not cost the report."""
    return storable(output.decode(errors="replace"))


async def run_command(
    command: str, env: Mapping[str, str], timeout: float, state_dir: Path
) -> StepResult:
    try:
        with step_lock(state_dir) as lock:
            process = await asyncio.create_subprocess_exec(
                "sh",
                "-c",
                command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=dict(env),
                process_group=0,
                pass_fds=(lock,),
            )
        return await _outcome(process, timeout)
    finally:
        step_ended(state_dir)


class OutputCapture:
    """The head and the tail of a step's output, in bounded memory however much it prints; the
    middle of a long output is left out, and says so."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.tail = bytearray()
        self.left_out = 0

    def add(self, chunk: bytes) -> None:
        room = OUTPUT_HEAD_BYTES - len(self.head)
        if room > 0:
            self.head.extend(chunk[:room])
            chunk = chunk[room:]
        self.tail.extend(chunk)
        excess = len(self.tail) - OUTPUT_TAIL_BYTES
        if excess > 0:
            del self.tail[:excess]
            self.left_out += excess

    def text(self) -> str:
        if not self.left_out:
            return _decoded(self.head + self.tail)
        gap = f"\n… {self.left_out:,} bytes of output left out …\n"
        return _decoded(self.head) + gap + _decoded(self.tail)


async def _outcome(process: asyncio.subprocess.Process, timeout: float) -> StepResult:
    output = OutputCapture()

    async def drain() -> int:
        assert process.stdout is not None
        while chunk := await process.stdout.read(65536):
            output.add(chunk)
        return await process.wait()

    try:
        code = await asyncio.wait_for(drain(), timeout)
    except TimeoutError:
        await _stop_group(process)
        return StepResult(False, f"timed out after {timeout:g} s", output.text())
    except asyncio.CancelledError:
        await _stop_group(process)
        raise
    if code != 0:
        return StepResult(False, f"exit status {code}", output.text())
    return StepResult(True, "exit status 0", output.text())


async def check_health(health: HealthCheck) -> StepResult:
    """2xx from UPDATE_HEALTHCHECK_URL within `retries` attempts and `timeout_seconds`."""
    if health.url is None:
        return StepResult(True, "skipped: UPDATE_HEALTHCHECK_URL is not set")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + health.timeout_seconds
    last = "no attempt before the deadline"
    attempts = 0
    async with httpx.AsyncClient() as client:
        while attempts < health.retries and loop.time() < deadline:
            attempts += 1
            try:
                left = deadline - loop.time()
                response = await client.get(
                    health.url, timeout=max(0.1, min(HEALTH_REQUEST_SECONDS, left))
                )
                if response.is_success:
                    return StepResult(True, f"HTTP {response.status_code} on attempt {attempts}")
                last = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            if attempts < health.retries:
                await asyncio.sleep(max(0.0, min(health.interval_seconds, deadline - loop.time())))
    return StepResult(False, f"not healthy after {attempts} attempt(s): {last}")


class ShellExecutor:
    def __init__(self, config: AgentConfig, base_env: Mapping[str, str] | None = None) -> None:
        self.config = config
        source = os.environ if base_env is None else base_env
        self.base_env = {k: v for k, v in source.items() if k not in _WITHHELD_ENV}

    @property
    def can_roll_back(self) -> bool:
        return self.config.rollback_command is not None

    @property
    def can_restore(self) -> bool:
        return self.config.restore_command is not None

    async def run(self, step: Step, context: StepContext) -> StepResult:
        if step == "health":
            return await check_health(self.config.health)
        optional = {
            "rollback": self.config.rollback_command,
            "restore": self.config.restore_command,
        }
        command = optional[step] if step in optional else self.config.commands[step]
        assert command is not None, f"no command for {step}"
        env = {**self.base_env, **context.env()}
        return await run_command(
            command, env, self.config.step_timeout_seconds, self.config.state_dir
        )
