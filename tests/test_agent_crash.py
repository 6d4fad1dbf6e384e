"""`kill -9` of a real agent during any step or its rollback: the restarted agent ends what the
killed one left running before it rolls back or reports, so the host runs what was reported.

The steps are real shell commands; `switch` and `rollback` write the version the host runs into
its `current` file, and a step starting while an orphan still runs leaves an "overlap" line.
"""

import os
import signal
import socket
from collections.abc import Iterator

import pytest

from tests.fake_control_plane import FakeControlPlane
from tests.fixtures_agents import AgentFactory, AgentHost, alive

Plane = tuple[FakeControlPlane, str]
COMMAND_STEPS = ["backup", "pull", "migrate", "smoke", "switch"]


@pytest.fixture
def silent_health_url() -> Iterator[str]:
    """A health endpoint that accepts connections and never answers: the agent stays in health."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/healthz"


def _ran(*steps: str) -> list[str]:
    return [f"{step} 1.1.0" for step in steps]


async def _restart_after_kill(host: AgentHost) -> set[int]:
    """Kills the agent alone and starts it again; returns the processes its step left behind."""
    orphans = host.step_processes()
    await host.kill_agent_only()
    await host.start()
    return orphans


@pytest.mark.parametrize("step", COMMAND_STEPS)
async def test_killed_during_a_step_the_step_is_ended_before_the_rollback(
    step: str, fake_control_plane: Plane, agent_host: AgentFactory
) -> None:
    plane, url = fake_control_plane
    job_id = plane.add_job("host-1", "1.1.0")
    host = await agent_host(url, plane.secret, block_at=step)
    await host.wait_blocked(step)

    orphans = await _restart_after_kill(host)
    assert alive(orphans), "the killed agent's step should have outlived it"
    await plane.wait_until(lambda: plane.final_report(job_id) is not None)

    final = plane.final_report(job_id)
    assert final is not None
    assert (final["status"], final["step"]) == ("rolled_back", step)
    assert not alive(orphans)
    host.open_gate()  # an orphan still waiting here would now switch the host
    done = COMMAND_STEPS[: COMMAND_STEPS.index(step) + 1]
    assert host.steps() == _ran(*done, "rollback")
    assert host.current() == "1.0.0"
    assert host.state()["current_version"] == "1.0.0"


async def test_killed_during_rollback_the_rollback_is_ended_before_it_runs_again(
    fake_control_plane: Plane, agent_host: AgentFactory
) -> None:
    plane, url = fake_control_plane
    job_id = plane.add_job("host-1", "1.1.0")
    host = await agent_host(url, plane.secret, fail_at="switch", block_at="rollback")
    await host.wait_blocked("rollback")

    orphans = await _restart_after_kill(host)
    assert alive(orphans)
    await plane.wait_until(lambda: plane.final_report(job_id) is not None)

    final = plane.final_report(job_id)
    assert final is not None
    assert (final["status"], final["step"]) == ("rolled_back", "switch")
    assert "agent restarted during rollback" in final["message"]
    assert not alive(orphans)
    host.open_gate()
    assert host.steps() == _ran(*COMMAND_STEPS, "rollback", "rollback")
    assert host.current() == "1.0.0"


async def test_killed_during_health_the_switched_host_is_rolled_back(
    fake_control_plane: Plane, agent_host: AgentFactory, silent_health_url: str
) -> None:
    plane, url = fake_control_plane
    job_id = plane.add_job("host-1", "1.1.0")
    env = {"UPDATE_HEALTHCHECK_URL": silent_health_url}
    host = await agent_host(url, plane.secret, extra_env=env)
    await plane.wait_until(lambda: ("in_progress", "health") in plane.reports_of(job_id))
    assert host.current() == "1.1.0"

    await _restart_after_kill(host)
    await plane.wait_until(lambda: plane.final_report(job_id) is not None)

    final = plane.final_report(job_id)
    assert final is not None
    assert (final["status"], final["step"]) == ("rolled_back", "health")
    assert host.steps() == _ran(*COMMAND_STEPS, "rollback")
    assert host.current() == "1.0.0"


async def test_a_step_ignoring_sigterm_is_killed_after_the_grace_period(
    fake_control_plane: Plane, agent_host: AgentFactory
) -> None:
    plane, url = fake_control_plane
    job_id = plane.add_job("host-1", "1.1.0")
    env = {"AGENT_TEST_IGNORE_TERM": "1"}
    host = await agent_host(url, plane.secret, block_at="switch", extra_env=env)
    await host.wait_blocked("switch")

    orphans = await _restart_after_kill(host)
    await plane.wait_until(lambda: plane.final_report(job_id) is not None, timeout=90)

    assert plane.reports_of(job_id)[-1] == ("rolled_back", "switch")
    assert not alive(orphans)
    assert "sending SIGKILL" in host.log()
    host.open_gate()
    assert host.steps() == _ran(*COMMAND_STEPS, "rollback")
    assert host.current() == "1.0.0"


async def test_what_a_finished_step_left_running_is_not_taken_for_a_leftover(
    fake_control_plane: Plane, agent_host: AgentFactory
) -> None:
    plane, url = fake_control_plane
    job_id = plane.add_job("host-1", "1.1.0")
    env = {"AGENT_TEST_BACKGROUND_AT": "pull"}
    host = await agent_host(url, plane.secret, block_at="smoke", extra_env=env)
    await host.wait_blocked("smoke")
    background = int((host.workdir / "background.pid").read_text())
    try:
        orphans = await _restart_after_kill(host)
        await plane.wait_until(lambda: plane.final_report(job_id) is not None)

        assert plane.reports_of(job_id)[-1] == ("rolled_back", "smoke")
        assert not alive(orphans)
        assert alive({background}) == {background}
    finally:
        os.kill(background, signal.SIGKILL)
