"""`rollout dev` as a user runs it: one process, every dependency up, data that survives a
restart, and nothing left running after Ctrl-C."""

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from devstack.ports import free_port
from devstack.secrets import load_or_create
from tests.fixtures_temporal import eventually
from tests.manifests import hand_signed


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc (children of children included)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


class DevStack:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.ports = {name: free_port() for name in ("API", "POSTGRES", "TEMPORAL", "TEMPORAL_UI")}
        self.url = f"http://127.0.0.1:{self.ports['API']}"
        self.process: asyncio.subprocess.Process | None = None
        self.log = data_dir.parent / "dev.log"

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROL_PLANE_")}
        env.pop("DATABASE_URL", None)
        env["ROLLOUT_DATA_DIR"] = str(self.data_dir)
        env.update({f"ROLLOUT_{name}_PORT": str(port) for name, port in self.ports.items()})
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cli.main", "dev", env=env, stdout=log, stderr=log
            )

    async def healthy(self) -> dict:
        async def probe() -> dict | None:
            if self.process is not None and self.process.returncode is not None:
                raise AssertionError(f"rollout dev exited: {self.log.read_text()[-2000:]}")
            try:
                async with httpx.AsyncClient(timeout=5) as client:
                    answer = await client.get(f"{self.url}/health")
            except httpx.TransportError:
                return None
            return answer.json() if answer.status_code == 200 else None

        return await eventually(probe, timeout=90)

    async def interrupt(self) -> tuple[int, set[int]]:
        assert self.process is not None
        children = descendants(self.process.pid)
        self.process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(self.process.wait(), 60)
        return code, children


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[DevStack]:
    dev = DevStack(tmp_path / "data")
    yield dev
    if dev.process is not None and dev.process.returncode is None:
        await dev.interrupt()


async def test_dev_stack_runs_everything_keeps_data_and_stops_cleanly(stack: DevStack) -> None:
    await stack.start()
    health = await stack.healthy()
    assert health["checks"] == {"database": "ok", "temporal": "ok"}
    secrets = load_or_create(stack.data_dir / "dev-secrets.env")
    admin = {"x-cp-admin-token": secrets["CONTROL_PLANE_ADMIN_TOKEN"]}
    async with httpx.AsyncClient(base_url=stack.url, headers=admin, timeout=60) as client:
        manifest = hand_signed(secrets["RELEASE_SIGNING_SECRET"], version="2.0.0")
        release = (await client.post("/api/releases", json=manifest)).json()
        created = await client.post(
            "/api/rollouts",
            json={"manifestId": release["id"], "channel": "stable", "batchSize": 5},
        )
        assert created.status_code == 201, created.text
        rollout = created.json()
        assert rollout["status"] == "completed"  # no instance registered: nothing to update
        ui = await client.get(f"http://127.0.0.1:{stack.ports['TEMPORAL_UI']}/")
        assert ui.status_code == 200

    code, children = await stack.interrupt()
    assert code == 0
    assert children, "the stack started no child process"
    assert [pid for pid in children if alive(pid)] == []

    await stack.start()
    await stack.healthy()
    async with httpx.AsyncClient(base_url=stack.url, headers=admin, timeout=60) as client:
        again = await client.get(f"/api/rollouts/{rollout['id']}")
        assert again.status_code == 200 and again.json()["status"] == "completed"
        assert (await client.get(f"/api/releases/{release['id']}")).json() == release
    code, children = await stack.interrupt()
    assert code == 0 and [pid for pid in children if alive(pid)] == []


async def test_a_taken_port_gives_one_clear_line(tmp_path: Path) -> None:
    taken = free_port()
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", taken)
    env = {**os.environ, "ROLLOUT_DATA_DIR": str(tmp_path / "data"), "ROLLOUT_API_PORT": str(taken)}
    async with blocker:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cli.main",
            "dev",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2
    lines = [line for line in stderr.decode().splitlines() if line.startswith("rollout dev")]
    assert lines == [
        f"rollout dev: port {taken} is already in use; set ROLLOUT_API_PORT to a free port"
    ]
