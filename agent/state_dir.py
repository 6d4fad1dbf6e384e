"""AGENT_STATE_DIR belongs to one agent: created private, and locked while the agent runs.

Two agents on one directory would each roll back and report the same job, and could run two
rollbacks at once. The lock is an flock on `agent.lock` whose descriptor only the agent holds
(it is never passed to a step), so it is free the moment the agent dies, however it dies.
"""

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

AGENT_LOCK = "agent.lock"
# The journal says what the host runs and which job is under way: nobody else's business.
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


class StateDirInUse(Exception):
    """Another agent holds the directory; the message names its pid when known."""


class StateDirUnusable(Exception):
    """A write in the directory failed (read-only, full, permissions changed under the agent):
    the agent cannot journal its steps, so it must not run any, and stops (exit 2)."""

    def __init__(self, state_dir: Path, error: OSError) -> None:
        where = f" ({error.filename})" if error.filename else ""
        super().__init__(
            f"AGENT_STATE_DIR {state_dir} cannot be written: {error.strerror or error}{where};"
            " the agent journals every step there and runs none until it can"
        )


@contextlib.contextmanager
def writing(state_dir: Path) -> Iterator[None]:
    """Turns a failed write in `state_dir` into StateDirUnusable."""
    try:
        yield
    except OSError as exc:
        raise StateDirUnusable(state_dir, exc) from exc


def make_private_dir(path: Path) -> None:
    """Creates `path` 0700 when missing; an existing directory keeps the mode its owner chose."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)


def open_private(path: Path, flags: int) -> int:
    """A descriptor on `path`, created 0600 when missing, never inherited by a child."""
    return os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE)


@contextlib.contextmanager
def claimed(state_dir: Path) -> Iterator[None]:
    """Holds the directory for one agent while the block runs; raises StateDirInUse."""
    make_private_dir(state_dir)
    lock = open_private(state_dir / AGENT_LOCK, os.O_RDWR)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(lock, 32, 0).decode(errors="replace").strip() or "unknown"
            raise StateDirInUse(
                f"another rollout agent (pid {holder}) is running with AGENT_STATE_DIR="
                f"{state_dir}; only one agent may use a state directory"
            ) from None
        os.ftruncate(lock, 0)
        os.pwrite(lock, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(lock)
