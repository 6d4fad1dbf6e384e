"""What a `rollout dev` that could not clean up left running on its data folder, found and stopped
by the next `rollout dev` on that folder instead of a bare "port in use".

While it runs, the supervisor holds an exclusive lock on `<data folder>/dev.lock` (its pid
written in it): a second `rollout dev` on the folder is refused, naming that pid. Every child
carries the data folder and its own name in its environment (`marks`), and so does what it
starts (PostgreSQL's backends). A start that holds the lock and still finds processes marked
with its folder found a stack whose supervisor is gone: it stops them, each with the signal its
supervisor would have sent. PostgreSQL and the Temporal dev server of a `rollout dev` from
before the marks are known by their command line (the folder's PostgreSQL data directory, its
Temporal SQLite file). Children die with their supervisor (devstack/parent_death.py), so this is
for a start within the seconds they take to stop, older versions, and platforms without a
parent-death signal.
"""

import contextlib
import fcntl
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from cli.terminal import terminal_safe

MARK_DIR = "ROLLOUT_DEV_DATA_DIR"
MARK_NAME = "ROLLOUT_DEV_CHILD"
LOCK_FILE = "dev.lock"
# What the supervisor stops each child with (devstack/stack.py); SIGTERM for the others.
STOP_SIGNALS = {"postgres": signal.SIGINT}
# The worker finishes running tasks within 20 s of SIGTERM; past this, what is left is killed.
STOP_SECONDS = 25.0


class FolderInUse(Exception):
    """Another `rollout dev` runs on this data folder."""


@dataclass(frozen=True)
class Leftover:
    pid: int
    name: str
    parent: int


def marks(data_dir: Path, name: str) -> dict[str, str]:
    """The environment that names a child of the stack on `data_dir`."""
    return {MARK_DIR: str(data_dir), MARK_NAME: name}


def lock_data_dir(data_dir: Path) -> int:
    """Take the data folder for this process (held until it exits, even by SIGKILL: the kernel
    drops the lock with the process). Returns the lock's file descriptor; children do not
    inherit it. Raises FolderInUse naming the `rollout dev` that holds it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise FolderInUse(
            f"another `rollout dev` (pid {holder}) is running on {data_dir}; stop it (Ctrl-C"
            f" in its terminal, or kill {holder}) or set ROLLOUT_DATA_DIR to another folder"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _read(pid: int, name: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return b""


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, None once it is gone."""
    fields = _read(pid, "stat").rsplit(b")", 1)
    if len(fields) < 2:
        return None
    state, parent = fields[1].split()[:2]
    return state.decode(), int(parent)


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _argv(pid: int) -> list[str]:
    return [arg.decode(errors="replace") for arg in _read(pid, "cmdline").split(b"\0") if arg]


def _environ(pid: int) -> dict[str, str]:
    pairs = (entry.partition(b"=") for entry in _read(pid, "environ").split(b"\0") if entry)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, _, v in pairs}


def _after(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv[:-1] else None


def _name_in(pid: int, data_dir: Path) -> str | None:
    """Which child of the stack on `data_dir` this process is, if it is one."""
    environ = _environ(pid)
    if environ.get(MARK_DIR) == str(data_dir):
        return environ.get(MARK_NAME, "?")
    argv = _argv(pid)
    if not argv:
        return None
    if Path(argv[0]).name == "postgres" and _after(argv, "-D") == str(data_dir / "postgres"):
        return "postgres"
    if _after(argv, "--db-filename") == str(data_dir / "temporal.db"):
        return "temporal"
    return None


def find(data_dir: Path) -> list[Leftover]:
    """The processes of a stack on `data_dir` other than this one's own children."""
    own = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == own:
            continue
        pid = int(entry.name)
        stat = _stat(pid)
        if stat is None or stat[0] in ("Z", "X") or stat[1] == own:
            continue
        name = _name_in(pid, data_dir)
        if name is not None:
            found.append(Leftover(pid, name, stat[1]))
    return sorted(found, key=lambda leftover: leftover.pid)


def heads(found: list[Leftover]) -> list[Leftover]:
    """The processes the stack started (PostgreSQL's postmaster, not its backends)."""
    pids = {leftover.pid for leftover in found}
    return [leftover for leftover in found if leftover.parent not in pids]


def stop(found: list[Leftover], timeout: float = STOP_SECONDS) -> list[Leftover]:
    """Stop what was left over as its supervisor would have; kill what still runs after
    `timeout` (with its process group: a postmaster's backends). Returns what was killed."""
    for head in heads(found):
        with contextlib.suppress(ProcessLookupError):
            os.kill(head.pid, STOP_SIGNALS.get(head.name, signal.SIGTERM))
    if _gone(found, timeout):
        return []
    stubborn = [leftover for leftover in heads(found) if _alive(leftover.pid)]
    for leftover in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(leftover.pid, signal.SIGKILL)
    _gone(found, 5.0)
    return stubborn


def _gone(found: list[Leftover], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_alive(leftover.pid) for leftover in found):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def describe(pid: int) -> str:
    """A process, for a line that says who holds a port: the stack it belongs to, or its
    command line."""
    environ = _environ(pid)
    if MARK_DIR in environ:
        return (
            f"pid {pid}, the {environ.get(MARK_NAME, '?')} of the `rollout dev` on"
            f" {terminal_safe(environ[MARK_DIR])}"
        )
    command = terminal_safe(" ".join(_argv(pid)))
    if len(command) > 80:
        command = command[:77] + "..."
    return f"pid {pid}: {command}" if command else f"pid {pid}"
