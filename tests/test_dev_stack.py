"""`rollout dev` as a user runs it: one process, every dependency up, data that survives a
restart, and nothing left running after Ctrl-C."""

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from devstack import leftovers
from devstack.ports import free_port, port_is_free
from devstack.postgres import EmbeddedPostgres
from devstack.secrets import load_or_create
from devstack.temporal import TemporalDevServer
from tests.fixtures_temporal import eventually
from tests.manifests import hand_signed

# Runs `rollout dev` (tests/tiers.py).
pytestmark = pytest.mark.servers


def lasting_ports(count: int) -> list[int]:
    """Free ports that stay free until the stack binds them, and again while a killed part
    restarts: outside the ephemeral range, which the kernel hands to every outgoing connection on
    the machine (and `free_port()` to every other test). Taken from that range, a port chosen
    seconds before the stack binds it was, beside a busy suite, sometimes taken meanwhile."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports: set[int] = set()
    while len(ports) < count:
        port = random.randrange(10_000, low) if low > 10_000 else free_port()
        if port_is_free(port):
            ports.add(port)
    return sorted(ports)


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
    """`rollout dev` as a child whose stdout is a pipe we read (like `| tee`) and may close."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        names = ("API", "POSTGRES", "TEMPORAL", "TEMPORAL_UI")
        self.ports = dict(zip(names, lasting_ports(len(names)), strict=True))
        self.url = f"http://127.0.0.1:{self.ports['API']}"
        self.process: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self.new_line = asyncio.Condition()
        self.reader: asyncio.Task[None] | None = None
        self.output: asyncio.ReadTransport | None = None

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROL_PLANE_")}
        env.pop("DATABASE_URL", None)
        env["ROLLOUT_DATA_DIR"] = str(self.data_dir)
        env.update({f"ROLLOUT_{name}_PORT": str(port) for name, port in self.ports.items()})
        self.lines = []
        read_end, write_end = os.pipe()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli.main", "dev", env=env, stdout=write_end, stderr=write_end
        )
        os.close(write_end)
        stream = asyncio.StreamReader()
        self.output, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(stream), os.fdopen(read_end, "rb", 0)
        )
        self.reader = asyncio.create_task(self._read(stream))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            async with self.new_line:
                self.lines.append(line.decode(errors="replace"))
                self.new_line.notify_all()

    def log(self) -> str:
        return "".join(self.lines)[-3000:]

    async def line_containing(self, text: str, after: int = 0, timeout: float = 90) -> str:
        """The first output line from index `after` on that contains `text`, once it is written."""

        def found() -> str | None:
            return next((line for line in self.lines[after:] if text in line), None)

        async with self.new_line:
            try:
                await asyncio.wait_for(self.new_line.wait_for(found), timeout)
            except TimeoutError:
                raise AssertionError(f"no line with {text!r}; output:\n{self.log()}") from None
        line = found()
        assert line is not None
        return line

    async def answer(self, path: str) -> dict:
        """The first 200 answer of `path` (the stack may be restarting a part meanwhile)."""

        last: list[str] = []

        async def probe() -> dict | None:
            if self.process is not None and self.process.returncode is not None:
                raise AssertionError(f"rollout dev exited: {self.log()}")
            try:
                async with httpx.AsyncClient(timeout=5) as client:
                    answer = await client.get(f"{self.url}{path}")
            except httpx.TransportError as exc:
                last[:] = [repr(exc)]
                return None
            last[:] = [f"{answer.status_code} {answer.text}"]
            return answer.json() if answer.status_code == 200 else None

        try:
            return await eventually(probe, timeout=90, interval=0.2)
        except AssertionError:
            raise AssertionError(f"no 200 from {path}: {last}; output:\n{self.log()}") from None

    async def healthy(self) -> dict:
        return await self.answer("/health/ready")

    def child_pid(self, name: str) -> int:
        """The pid of the running child named `name` (its restarts log a new pid)."""
        started = [line for line in self.lines if f"{name} restarted (pid " in line]
        if started:
            return int(started[-1].rsplit("(pid ", 1)[1].split(")")[0])
        assert self.process is not None
        marks = {
            "postgres": "/postgres -D",
            "temporal": "server start-dev",
            "worker": "cli.main worker",
            "api": "cli.main api",
        }
        for pid in descendants(self.process.pid):
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marks[name] in command and _parent(pid) == self.process.pid:
                return pid
        raise AssertionError(f"no {name} child of rollout dev")

    async def interrupt(self, *, close_stdout: bool = False) -> tuple[int, set[int]]:
        """Ctrl-C; with close_stdout, the reader of its output is gone first (`| tee` got the
        same Ctrl-C)."""
        assert self.process is not None and self.reader is not None and self.output is not None
        children = descendants(self.process.pid)
        if close_stdout:
            self.reader.cancel()
            self.output.close()
        self.process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(self.process.wait(), 60)
        if not close_stdout:
            await self.reader
            self.output.close()
        return code, children

    async def kill(self) -> set[int]:
        """`kill -9` of `rollout dev` itself; the processes it had started."""
        assert self.process is not None and self.reader is not None and self.output is not None
        children = descendants(self.process.pid)
        self.process.kill()
        await self.process.wait()
        await asyncio.wait_for(self.reader, 60)  # its children hold no copy of its output
        self.output.close()
        return children


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[DevStack]:
    dev = DevStack(tmp_path / "data")
    yield dev
    if dev.process is not None and dev.process.returncode is None:
        await dev.interrupt()


async def kill_and_see_restarted(stack: DevStack, name: str) -> None:
    old = stack.child_pid(name)
    seen = len(stack.lines)
    os.kill(old, signal.SIGKILL)
    line = await stack.line_containing(f"{name} exited with status -9; restarting", seen)
    assert line.startswith("[dev     ]")
    await stack.line_containing(f"{name} restarted (pid ", seen)
    assert stack.child_pid(name) != old
    assert not alive(old)
    ready = await stack.healthy()
    assert set(ready["checks"].values()) == {"ok"}


async def test_dev_stack_supervises_its_parts_keeps_data_and_stops_cleanly(
    stack: DevStack,
) -> None:
    await stack.start()
    ready = await stack.healthy()
    assert ready["checks"] == {"database": "ok", "temporal": "ok", "worker": "ok"}
    assert await stack.answer("/health/live") == {"status": "ok"}
    assert (await stack.answer("/health"))["checks"] == {"database": "ok", "temporal": "ok"}
    secrets = load_or_create(stack.data_dir / "dev-secrets.env")
    assert secrets["CONTROL_PLANE_URL"] == stack.url  # the CLI and simulator follow the port
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

    # kill -9 of each part: reaped, restarted in place (PostgreSQL over its own stale lock
    # files), and the stack is ready again.
    for name in ("postgres", "worker", "api", "temporal"):
        await kill_and_see_restarted(stack, name)
    async with httpx.AsyncClient(base_url=stack.url, headers=admin, timeout=60) as client:
        again = await client.get(f"/api/rollouts/{rollout['id']}")
        assert again.status_code == 200 and again.json()["status"] == "completed"

    # Ctrl-C after the reader of its output went away (`make dev | tee dev.log`).
    code, children = await stack.interrupt(close_stdout=True)
    assert code == 0
    assert len(children) >= 4
    assert [pid for pid in children if alive(pid)] == []

    await stack.start()
    await stack.healthy()
    async with httpx.AsyncClient(base_url=stack.url, headers=admin, timeout=60) as client:
        again = await client.get(f"/api/rollouts/{rollout['id']}")
        assert again.status_code == 200 and again.json()["status"] == "completed"
        assert (await client.get(f"/api/releases/{release['id']}")).json() == release
    code, children = await stack.interrupt()
    assert code == 0 and [pid for pid in children if alive(pid)] == []


async def rollout_dev_exits(data_dir: Path, **env: str) -> tuple[int, str, str]:
    """A `rollout dev` that is expected to stop at once: its exit status, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        "dev",
        env={**os.environ, "ROLLOUT_DATA_DIR": str(data_dir), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_a_malformed_port_gives_one_line_and_exit_2(tmp_path: Path) -> None:
    code, out, err = await rollout_dev_exits(tmp_path / "data", ROLLOUT_API_PORT="abc")
    assert code == 2
    assert out == ""
    assert err.splitlines() == [
        "rollout dev: refusing to start: ROLLOUT_API_PORT: Input should be a valid integer,"
        " unable to parse string as an integer"
    ]
    assert not (tmp_path / "data").exists()


async def test_a_taken_port_gives_one_clear_line(tmp_path: Path) -> None:
    taken = free_port()
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", taken)
    async with blocker:
        code, _, stderr = await rollout_dev_exits(tmp_path / "data", ROLLOUT_API_PORT=str(taken))
    assert code == 2
    lines = [line for line in stderr.splitlines() if line.startswith("rollout dev")]
    (line,) = lines
    # Who holds it: this test's process (its command line, cut to 80 characters).
    assert line.startswith(f"rollout dev: port {taken} is already in use (by pid {os.getpid()}: ")
    assert line.endswith("); set ROLLOUT_API_PORT to a free port")


async def all_gone(pids: set[int]) -> None:
    async def probe() -> bool:
        return not any(alive(pid) for pid in pids)

    try:
        await eventually(probe, timeout=60, interval=0.1)
    except AssertionError:
        left = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:80] for pid in pids if alive(pid)}
        raise AssertionError(f"still running: {left}") from None


async def test_a_killed_rollout_dev_takes_its_children_along(stack: DevStack) -> None:
    """kill -9 of the supervisor: its four children (and PostgreSQL's backends) stop by
    themselves, every port is free, and the next start on the same folder serves; a second
    `rollout dev` on that folder meanwhile is refused, naming the first."""
    await stack.start()
    await stack.healthy()
    children = await stack.kill()
    assert len(children) >= 4
    await all_gone(children)
    assert all(port_is_free(port) for port in stack.ports.values())

    await stack.start()
    await stack.healthy()
    assert stack.process is not None
    others = zip(("API", "POSTGRES", "TEMPORAL", "TEMPORAL_UI"), lasting_ports(4), strict=True)
    code, _, stderr = await rollout_dev_exits(
        stack.data_dir, **{f"ROLLOUT_{name}_PORT": str(port) for name, port in others}
    )
    first = stack.process.pid
    assert code == 2
    assert stderr.splitlines() == [
        f"rollout dev: another `rollout dev` (pid {first}) is running on"
        f" {stack.data_dir.resolve()}; stop it (Ctrl-C in its terminal, or kill {first}) or"
        " set ROLLOUT_DATA_DIR to another folder"
    ]
    await stack.healthy()  # the first one is untouched
    code, children = await stack.interrupt()
    assert code == 0 and [pid for pid in children if alive(pid)] == []


async def test_a_start_stops_what_a_gone_rollout_dev_left_on_its_folder(stack: DevStack) -> None:
    """What a `rollout dev` that could not stop its children left on the data folder, holding
    its ports: a PostgreSQL on the folder's data, a Temporal dev server on its file, an API (a
    process marked as the stack's). The next start says so, stops them and serves."""
    data = stack.data_dir
    postgres = EmbeddedPostgres(data / "postgres", stack.ports["POSTGRES"])
    postgres.start()
    temporal = TemporalDevServer(data, stack.ports["TEMPORAL"], stack.ports["TEMPORAL_UI"])
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "start_new_session": True}
    temporal_process = subprocess.Popen(temporal.argv(), **quiet)  # type: ignore[call-overload]
    api = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(stack.ports["API"])],
        env={**os.environ, **leftovers.marks(data.resolve(), "api")},
        **quiet,  # type: ignore[call-overload]
    )
    processes = [postgres.process, temporal_process, api]
    try:
        await eventually(lambda: asyncio.to_thread(lambda: not port_is_free(stack.ports["API"])))
        await temporal.wait_ready()
        await stack.start()
        line = await stack.line_containing("has a stack left over")
        assert postgres.process is not None
        for name, process in (("postgres", postgres.process), ("temporal", temporal_process)):
            assert f"{name} (pid {process.pid})" in line
        assert f"api (pid {api.pid})" in line and line.endswith("; stopping it\n")
        await stack.line_containing("the left-over stack stopped")
        await stack.healthy()
        assert all(process.poll() is not None for process in processes if process)
    finally:
        for process in processes:
            if process is not None and process.poll() is None:
                process.kill()
            if process is not None:
                process.wait()
