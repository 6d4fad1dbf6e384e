"""A shard in its own process, driven over its stdin/stdout one JSON line at a time.

The parent writes the setup (options with secrets: a pipe, never argv or env), then `snapshot`
or `finish <grace seconds>`; the child answers each with one line. The end of its input (the
parent is gone) finishes it too. It runs in its own session, so a Ctrl-C in the terminal
reaches only the parent, which then lets every shard's jobs finish.
"""

import asyncio
import contextlib
import logging
import os
import sys
from typing import BinaryIO

import uvloop
from pydantic import BaseModel

from runtime.heap import collect_less
from runtime.logs import configure_logging
from simulator.options import SimulationOptions
from simulator.shard import Shard, ShardResult, ShardSnapshot

# A result holds every latency sample of the slice: one line of many megabytes.
LINE_LIMIT = 1 << 28


class SimulatorProcessError(Exception):
    """A simulator process died or answered nonsense; the message says which."""


class _Setup(BaseModel):
    options: SimulationOptions
    instance_ids: list[str]
    offset: float
    agent_log_level: int


class RemoteShard:
    """The parent's handle on a shard process; the same calls as `Shard`."""

    def __init__(self, options: SimulationOptions, instance_ids: list[str], offset: float) -> None:
        self.setup = _Setup(
            options=options,
            instance_ids=instance_ids,
            offset=offset,
            agent_log_level=logging.getLogger("agent").getEffectiveLevel(),
        )
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "simulator.shard_process",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
            limit=LINE_LIMIT,
        )
        with contextlib.suppress(ConnectionError):  # died at once: the first snapshot says how
            await self._write(self.setup.model_dump_json().encode())

    async def snapshot(self) -> ShardSnapshot:
        return ShardSnapshot.model_validate_json(await self._ask(b"snapshot"))

    async def finish(self, grace_seconds: float) -> ShardResult:
        answer = ShardResult.model_validate_json(await self._ask(b"finish %f" % grace_seconds))
        assert self.process is not None
        await self.process.wait()
        return answer

    async def close(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    async def _write(self, line: bytes) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(line + b"\n")
        await self.process.stdin.drain()

    async def _ask(self, command: bytes) -> bytes:
        assert self.process is not None and self.process.stdout is not None
        with contextlib.suppress(ConnectionError):  # it died; reading says how
            await self._write(command)
        line = await self.process.stdout.readline()
        if not line:
            status = await self.process.wait()
            raise SimulatorProcessError(
                f"simulator process {self.process.pid} exited with status {status}"
            )
        return line


async def _serve(out: BinaryIO) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    setup = _Setup.model_validate_json(await reader.readline())
    configure_logging(level=logging.WARNING)
    logging.getLogger("agent").setLevel(setup.agent_log_level)
    shard = Shard(setup.options, setup.instance_ids, setup.offset)

    def send(model: BaseModel) -> None:
        out.write(model.model_dump_json().encode() + b"\n")
        out.flush()

    await shard.start()
    collect_less()
    try:
        while True:
            command = (await reader.readline()).split()
            if command == [b"snapshot"]:
                send(await shard.snapshot())
                continue
            grace = float(command[1]) if command[:1] == [b"finish"] else 0.0
            send(await shard.finish(grace))
            return
    finally:
        await shard.close()


def main() -> None:
    # Only answers go to the real stdout; anything else printed lands on stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    # uvloop, as the API's uvicorn: a shard's agents are its whole load.
    uvloop.run(_serve(out))


if __name__ == "__main__":
    main()
