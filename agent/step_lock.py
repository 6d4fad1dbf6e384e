"""No process of a step outlives a dead agent unnoticed: a lock that every step process holds.

Before a step is spawned the agent creates `step.lock` afresh in AGENT_STATE_DIR and flocks
it; the step's shell inherits that descriptor (and with it the lock), and so does everything
the shell starts. An flock lasts while any descriptor to it is open, so "step.lock is locked"
means "a process of the step still runs" - also one spawned an instant before the agent was
killed, before anything could be written down. The agent closes its own copy once the step is
spawned, and removes the file when the step has ended, so what a finished step left running on
purpose (a service it started in the background) is never taken for a leftover.

A restarted agent calls `end_leftover_step` before it rolls back or reports: it finds the
holders in /proc (Linux), sends SIGTERM to their process groups, SIGKILL after a grace period,
and returns only once the lock is free, that is once none of them is left.
"""

import asyncio
import contextlib
import fcntl
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from agent.logs import InstanceLog
from agent.state_dir import open_private, writing
from agent.timing import sleep_unless_stopped

STEP_LOCK = "step.lock"
KILL_GRACE_SECONDS = 5.0
# How often a lock still held is looked at again; no event says that a process has gone.
_RECHECK_SECONDS = 0.05
_STILL_WAITING_LOG_SECONDS = 30.0


@contextlib.contextmanager
def step_lock(state_dir: Path) -> Iterator[int]:
    """A descriptor holding a new lock, to pass to the step; the agent's copy closes on exit.
    Raises StateDirUnusable when the lock cannot be made: no step runs without it."""
    path = state_dir / STEP_LOCK
    with writing(state_dir):
        path.unlink(missing_ok=True)
        descriptor = open_private(path, os.O_RDWR | os.O_EXCL)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield descriptor
    finally:
        os.close(descriptor)


def step_ended(state_dir: Path) -> None:
    """The step is over: whatever still holds the old lock is no longer the step's business.
    A directory that no longer takes writes keeps the file: the next lock or journal write
    says so (StateDirUnusable), and a free lock left behind is only removed by the next start."""
    with contextlib.suppress(OSError):
        (state_dir / STEP_LOCK).unlink(missing_ok=True)


def _take(descriptor: int) -> bool:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holders(file: os.stat_result) -> set[int]:
    """Pids with a descriptor open on `file` (other users' processes are visible only to root).

    Empty without /proc (not Linux): the caller then waits for the lock and says so.
    """
    found: set[int] = set()
    if not os.path.isdir("/proc"):
        return found
    for process in os.scandir("/proc"):
        if not process.name.isdigit() or int(process.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            for descriptor in os.scandir(f"{process.path}/fd"):
                with contextlib.suppress(OSError):
                    target = os.stat(descriptor.path)
                    if (target.st_dev, target.st_ino) == (file.st_dev, file.st_ino):
                        found.add(int(process.name))
                        break
    return found


def _listed(pids: set[int]) -> str:
    return ", ".join(map(str, sorted(pids))) or "none visible to this user"


def _signal(pids: set[int], sig: signal.Signals) -> None:
    """The whole process group of each holder: its children may have closed the descriptor."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            group = os.getpgid(pid)
            if group == os.getpgrp():
                os.kill(pid, sig)
            else:
                os.killpg(group, sig)


async def end_leftover_step(state_dir: Path, log: InstanceLog, stop: asyncio.Event) -> bool:
    """Ends what a previous run's step left running; False only when `stop` came first."""
    path = state_dir / STEP_LOCK
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        if not _take(descriptor):
            file = os.fstat(descriptor)
            holders = _holders(file)
            log.warning(
                "a step started before this agent restarted is still running (pids %s);"
                " ending it before anything else",
                _listed(holders),
            )
            if not await _end(descriptor, file, holders, log, stop):
                return False
            log.info("the previous run's step has ended; no process of it is left")
        step_ended(state_dir)
        return True
    finally:
        os.close(descriptor)


async def _end(
    descriptor: int, file: os.stat_result, holders: set[int], log: InstanceLog, stop: asyncio.Event
) -> bool:
    """SIGTERM, SIGKILL after the grace period, until the lock is free or `stop` is set."""
    loop = asyncio.get_running_loop()
    grace_until = loop.time() + KILL_GRACE_SECONDS
    _signal(holders, signal.SIGTERM)
    killed = False
    next_log = loop.time() + _STILL_WAITING_LOG_SECONDS
    while not _take(descriptor):
        if stop.is_set():
            return False
        now = loop.time()
        if now >= grace_until:
            # Again on every round: a holder may have forked between two looks.
            holders = _holders(file)
            if not killed:
                log.warning(
                    "sending SIGKILL to what SIGTERM left of it (pids %s)", _listed(holders)
                )
                killed = True
            _signal(holders, signal.SIGKILL)
        if now >= next_log:
            log.error(
                "%s is still locked by processes this agent cannot see or end; waiting",
                STEP_LOCK,
            )
            next_log = now + _STILL_WAITING_LOG_SECONDS
        await sleep_unless_stopped(stop, _RECHECK_SECONDS)
    return True
