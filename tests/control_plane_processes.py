"""`rollout api` and `rollout worker` as real processes, for tests of many processes at once.

Each process's stderr is read line by line as it comes: a test awaits the line that says the
process is ready (no polling of a port), and can check afterwards what the process logged.
"""

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from server.settings import ApiSettings

READY_API = "Application startup complete"
READY_WORKER = "worker polling task queue"


def process_env(settings: ApiSettings, **extra: str) -> dict[str, str]:
    """The environment a deployment would give: the test's settings as variables, and none of
    the `TEMPORAL_*` / `CONTROL_PLANE_*` / `WORKER_*` variables of the shell running pytest."""
    own = ("CONTROL_PLANE_", "TEMPORAL_", "WORKER_", "API_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(own)}
    env |= {
        "DATABASE_URL": settings.database_url,
        "TEMPORAL_TASK_QUEUE": settings.temporal_task_queue,
        "CONTROL_PLANE_ADMIN_TOKEN": settings.control_plane_admin_token.get_secret_value(),
        "CONTROL_PLANE_RELEASE_SIGNING_SECRET": (
            settings.control_plane_release_signing_secret.get_secret_value()
        ),
    }
    if settings.temporal_address:
        env["TEMPORAL_ADDRESS"] = settings.temporal_address
    if settings.temporal_namespace:
        env["TEMPORAL_NAMESPACE"] = settings.temporal_namespace
    if settings.control_plane_agent_token is not None:
        env["CONTROL_PLANE_AGENT_TOKEN"] = settings.control_plane_agent_token.get_secret_value()
    return env | extra


class ControlPlaneProcess:
    """One `rollout <command>` process and the lines it wrote to stderr so far."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            async with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    def log(self) -> str:
        return "\n".join(self.lines)

    async def wait_for_line(self, text: str, count: int = 1, timeout: float = 60) -> None:
        """Until `count` lines contain `text`; fails at once if the process ends first."""

        def seen() -> bool:
            return sum(text in line for line in self.lines) >= count or self._reader.done()

        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(seen)
        if sum(text in line for line in self.lines) < count:
            raise AssertionError(f"process ended before logging {text!r}:\n{self.log()}")

    async def stop(self) -> int:
        """SIGTERM and the exit status; what a process manager does on a deploy."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        status = await asyncio.wait_for(self.process.wait(), 30)
        await self._reader
        return status


@asynccontextmanager
async def control_plane_process(
    env: dict[str, str],
    *args: str,
    ready: str,
    ready_count: int = 1,
    graceful: frozenset[int] = frozenset({0}),
) -> AsyncIterator[ControlPlaneProcess]:
    """`rollout <args>` started, awaited until it logged `ready`, stopped with SIGTERM (an exit
    status in `graceful` expected) unless the test ended it itself."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        *args,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    running = ControlPlaneProcess(process)
    try:
        await running.wait_for_line(ready, ready_count)
        yield running
    finally:
        stopped_by_test = process.returncode is not None
        status = await running.stop()
        if not stopped_by_test:
            assert status in graceful, running.log()


def api_process(
    env: dict[str, str], port: int, *, workers: int = 1
) -> AbstractAsyncContextManager[ControlPlaneProcess]:
    return control_plane_process(
        env,
        "api",
        "--port",
        str(port),
        "--workers",
        str(workers),
        ready=READY_API,
        ready_count=workers,
        # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly.
        graceful=frozenset({0, -signal.SIGTERM}),
    )


def worker_process(env: dict[str, str]) -> AbstractAsyncContextManager[ControlPlaneProcess]:
    return control_plane_process(env, "worker", ready=READY_WORKER)
