"""The step lock finds every process of a step, even one that left the step's process group."""

import asyncio
import os
from pathlib import Path

import pytest

from agent.logs import instance_log
from agent.step_lock import STEP_LOCK, end_leftover_step, step_lock
from tests.fixtures_agents import alive

LOG = instance_log(__name__, "host-1")


@pytest.mark.servers  # runs shell processes (tests/tiers.py)
async def test_a_process_that_left_the_step_group_is_found_and_ended(tmp_path: Path) -> None:
    # The agent spawns a step that starts a process in a session of its own, then dies.
    with step_lock(tmp_path) as lock:
        step = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            # The pid is printed from inside the new session, so it is there once read.
            "setsid sh -c 'echo $$; exec sleep 60' & wait",
            stdout=asyncio.subprocess.PIPE,
            process_group=0,
            pass_fds=(lock,),
        )
    assert step.stdout is not None
    escaped = int(await step.stdout.readline())
    assert alive({step.pid, escaped}) == {step.pid, escaped}
    assert os.getpgid(escaped) != step.pid  # SIGTERM to the step's group would miss it

    # The next agent's start.
    assert await end_leftover_step(tmp_path, LOG, asyncio.Event())

    # The lock is free once its last holder's files are closed, a moment before the kernel has
    # finished that process's exit (it was seen still running once, under load): that moment,
    # bounded; a process that went on would keep the lock, and the call above would not return.
    async with asyncio.timeout(5):
        while alive({step.pid, escaped}):
            await asyncio.sleep(0.01)
    assert not (tmp_path / STEP_LOCK).exists()
    await step.wait()


async def test_a_lock_nobody_holds_is_only_removed(tmp_path: Path) -> None:
    # The agent died after creating the lock and before spawning the step.
    with step_lock(tmp_path):
        pass

    assert await end_leftover_step(tmp_path, LOG, asyncio.Event())

    assert not (tmp_path / STEP_LOCK).exists()
