"""Child processes with prefixed output, stopped together: the `rollout dev` supervisor."""

import asyncio
import os
import signal
import sys
from dataclasses import dataclass, field


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    process: asyncio.subprocess.Process | None = None
    pump: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            env={**os.environ, **self.env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us only; we stop children in order
        )
        self.pump = asyncio.create_task(pump_lines(self.name, self.process.stdout))

    async def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        if self.pump is not None:
            await self.pump


async def pump_lines(name: str, stream: asyncio.StreamReader | None) -> None:
    prefix = f"[{name:<8}] "
    if stream is None:
        return
    while line := await stream.readline():
        sys.stdout.write(prefix + line.decode(errors="replace"))
        sys.stdout.flush()


def say(line: str) -> None:
    print(f"[{'dev':<8}] {line}", flush=True)
