"""Supervised child processes with prefixed output: the `rollout dev` process tree.

Each child runs in its own session (Ctrl-C reaches `rollout dev` only, which stops children in
order) and gets its stop signal should `rollout dev` die without stopping it (kill -9:
devstack/parent_death.py). A child that dies is reaped, whatever it left in its process group is
killed, and it is started again after a growing delay, with a log line each time.
"""

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from cli.output import write_safely
from devstack.parent_death import die_with_this_process

FIRST_RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 30.0
# A child that ran this long before dying counts as healthy: its next restart is quick again.
STEADY_SECONDS = 60.0
_PUMP_DRAIN_SECONDS = 5.0


@dataclass(eq=False)
class Child:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    # Run (in a thread) before every start, e.g. to clear a dead server's lock files.
    prepare: Callable[[], None] | None = None
    stop_signal: signal.Signals = signal.SIGTERM
    process: asyncio.subprocess.Process | None = None
    exits: int = 0
    _pump: asyncio.Task[None] | None = None
    _supervisor: asyncio.Task[None] | None = None
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        """Start the program (errors propagate: a first start that fails stops `rollout dev`)
        and keep it running until `stop`."""
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(), name=f"supervise {self.name}")

    async def stop(self, timeout: float = 20.0) -> None:
        """Ask the program to stop, kill it after `timeout`, and wait until it is reaped."""
        self._stopping.set()
        if self._supervisor is None:
            return
        self._signal(self.stop_signal)
        try:
            await asyncio.wait_for(asyncio.shield(self._supervisor), timeout)
        except TimeoutError:
            say(f"{self.name} did not stop within {timeout:.0f}s; killing it")
            self._signal(signal.SIGKILL)
            await self._supervisor

    async def _spawn(self) -> asyncio.subprocess.Process:
        if self.prepare is not None:
            await asyncio.to_thread(self.prepare)
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            env={**os.environ, **self.env},
            user=self.user,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_this_process(self.stop_signal),
        )
        self._pump = asyncio.create_task(pump_lines(self.name, self.process.stdout))
        return self.process

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        delay = FIRST_RESTART_DELAY
        while True:
            started = loop.time()
            ended = await self._wait_and_reap()
            if self._stopping.is_set():
                return
            self.exits += 1
            if loop.time() - started >= STEADY_SECONDS:
                delay = FIRST_RESTART_DELAY
            say(f"{self.name} {ended}; restarting in {delay:g}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self._stopping.is_set():
                return
            delay = min(delay * 2, MAX_RESTART_DELAY)
            try:
                process = await self._spawn()
            except (OSError, RuntimeError) as exc:
                self.process = None
                say(f"{self.name} could not be started: {exc}")
                continue
            say(f"{self.name} restarted (pid {process.pid})")
            if self._stopping.is_set():  # stop() came while we were starting it
                self._signal(self.stop_signal)

    async def _wait_and_reap(self) -> str:
        """Wait for the program to end; kill what it left in its process group (a postmaster's
        backends, a shell's children), then drain its output. Returns how it ended."""
        if self.process is None:
            return "did not start"
        code = await self.process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self._pump is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._pump, _PUMP_DRAIN_SECONDS)
        return f"exited with status {code}"

    def _signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)


async def pump_lines(name: str, stream: asyncio.StreamReader | None) -> None:
    """Copy a child's output, prefixed with its name; read to the end even when our own stdout
    is gone, so the child never blocks on a full pipe."""
    prefix = f"[{name:<8}] "
    if stream is None:
        return
    while line := await stream.readline():
        write_safely(sys.stdout, prefix + line.decode(errors="replace"))


def say(line: str) -> None:
    write_safely(sys.stdout, f"[{'dev':<8}] {line}\n")
