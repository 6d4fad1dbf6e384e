"""A real agent process runs a scripted job from the fake control plane with real shell steps."""

import signal
from typing import Any

import pytest

from tests.fake_control_plane import FakeControlPlane
from tests.fixtures_agents import AgentFactory

STEPS = ["backup", "pull", "migrate", "smoke", "switch"]
Plane = tuple[FakeControlPlane, str]


def _in_progress(*steps: str) -> list[tuple[str, str]]:
    return [("in_progress", step) for step in steps]


async def test_job_runs_every_step_once_then_succeeds(
    fake_control_plane: Plane, agent_host: AgentFactory
) -> None:
    plane, url = fake_control_plane
    job_id = plane.add_job("host-1", "1.1.0")
    host = await agent_host(url, plane.secret)

    await plane.wait_until(lambda: plane.final_report(job_id) is not None)
    assert plane.reports_of(job_id) == [
        *_in_progress("preflight", *STEPS, "health"),
        ("succeeded", "health"),
    ]
    assert host.steps() == [f"{step} 1.1.0" for step in STEPS]
    assert host.state()["current_version"] == "1.1.0"

    # Polling again reports the new version and never reruns the finished job.
    polls_before = len(plane.polls)
    await plane.wait_until(lambda: len(plane.polls) >= polls_before + 3)
    assert plane.polls[-1]["currentVersion"] == "1.1.0"
    assert host.steps() == [f"{step} 1.1.0" for step in STEPS]


@pytest.mark.parametrize(
    ("target", "agent_options", "ran", "final", "message"),
    [
        (
            "1.1.0",
            {"fail_at": "smoke"},
            ["backup", "pull", "migrate", "smoke", "rollback"],
            ("rolled_back", "smoke"),
            ["smoke failed: exit status 3", "smoke broke on purpose"],
        ),
        (
            "1.1.0",
            {"fail_at": "pull", "rollback": False},
            ["backup", "pull"],
            ("failed", "pull"),
            ["no UPDATE_ROLLBACK_CMD"],
        ),
        (
            "1.1.0",
            {"fail_at": "switch rollback"},
            [*STEPS, "rollback"],
            ("rollback_failed", "switch"),
            ["rollback failed: exit status 3"],
        ),
        ("1.0.0", {}, [], ("failed", "preflight"), ["not newer"]),
    ],
    ids=["failed step rolled back", "no rollback command", "failing rollback", "not newer"],
)
async def test_a_job_that_cannot_finish_ends_on_the_step_that_failed(
    fake_control_plane: Plane,
    agent_host: AgentFactory,
    target: str,
    agent_options: dict[str, Any],
    ran: list[str],
    final: tuple[str, str],
    message: list[str],
) -> None:
    plane, url = fake_control_plane
    job_id = plane.add_job("host-1", target)
    host = await agent_host(url, plane.secret, current_version="1.0.0", **agent_options)

    await plane.wait_until(lambda: plane.final_report(job_id) is not None)
    assert plane.reports_of(job_id) == [*_in_progress("preflight", *ran), final]
    assert host.steps() == [f"{step} {target}" for step in ran]
    for part in message:
        assert part in plane.final_report(job_id)["message"]
    assert host.state()["current_version"] == "1.0.0"


async def test_sigkill_during_migrate_rolls_back_on_restart(
    fake_control_plane: Plane, agent_host: AgentFactory
) -> None:
    plane, url = fake_control_plane
    job_id = plane.add_job("host-1", "1.1.0")
    host = await agent_host(url, plane.secret, block_at="migrate")
    await host.wait_for_step("migrate 1.1.0")
    assert host.state()["active"]["step"] == "migrate"

    await host.kill_hard()
    await host.start()

    await plane.wait_until(lambda: plane.final_report(job_id) is not None)
    assert plane.final_report(job_id)["status"] == "rolled_back"
    assert plane.final_report(job_id)["step"] == "migrate"
    assert "restarted while migrate was running" in plane.final_report(job_id)["message"]
    assert host.steps() == ["backup 1.1.0", "pull 1.1.0", "migrate 1.1.0", "rollback 1.1.0"]
    # Polling goes on; the job is remembered as finished and migrate never runs again.
    polls_before = len(plane.polls)
    await plane.wait_until(lambda: len(plane.polls) >= polls_before + 2)
    assert host.steps().count("migrate 1.1.0") == 1
    assert job_id in host.state()["finished_jobs"]


async def test_sigterm_lets_the_step_finish_reports_and_exits_zero(
    fake_control_plane: Plane, agent_host: AgentFactory
) -> None:
    plane, url = fake_control_plane
    job_id = plane.add_job("host-1", "1.1.0")
    host = await agent_host(url, plane.secret, block_at="migrate")
    await host.wait_for_step("migrate 1.1.0")

    host.send(signal.SIGTERM)
    host.open_gate()

    assert await host.wait_exit() == 0
    final = plane.final_report(job_id)
    assert final is not None
    assert (final["status"], final["step"]) == ("rolled_back", "migrate")
    assert "SIGTERM" in final["message"]
    assert "migrate ok: exit status 0" in final["message"]  # finished, not killed
    # The running step finished; the steps after it never started.
    assert host.steps() == ["backup 1.1.0", "pull 1.1.0", "migrate 1.1.0", "rollback 1.1.0"]


async def test_sigterm_while_idle_exits_zero_at_once(
    fake_control_plane: Plane, agent_host: AgentFactory
) -> None:
    plane, url = fake_control_plane
    host = await agent_host(url, plane.secret, extra_env={"AGENT_POLL_INTERVAL": "60"})
    await plane.wait_until(lambda: len(plane.polls) >= 1)

    host.send(signal.SIGTERM)
    assert await host.wait_exit(timeout=30) == 0  # well before its next poll
    assert "stopped" in host.log()


async def test_sigkill_during_rollback_runs_rollback_again_on_restart(
    fake_control_plane: Plane, agent_host: AgentFactory
) -> None:
    plane, url = fake_control_plane
    job_id = plane.add_job("host-1", "1.1.0")
    host = await agent_host(url, plane.secret, fail_at="smoke", block_at="rollback")
    await host.wait_for_step("rollback 1.1.0")
    assert host.state()["active"]["step"] == "rollback"

    await host.kill_hard()
    host.open_gate()
    await host.start()

    await plane.wait_until(lambda: plane.final_report(job_id) is not None)
    final = plane.final_report(job_id)
    assert (final["status"], final["step"]) == ("rolled_back", "smoke")
    assert "smoke failed: exit status 3" in final["message"]
    assert "agent restarted during rollback" in final["message"]
    assert host.steps()[-3:] == ["smoke 1.1.0", "rollback 1.1.0", "rollback 1.1.0"]


async def test_step_output_with_nul_bytes_is_reported_storable(
    fake_control_plane: Plane, agent_host: AgentFactory
) -> None:
    plane, url = fake_control_plane
    job_id = plane.add_job("host-1", "1.1.0")
    smoke = {"UPDATE_SMOKE_CMD": r"printf 'boom\000zero\n'; exit 4"}
    await agent_host(url, plane.secret, extra_env=smoke)

    await plane.wait_until(lambda: plane.final_report(job_id) is not None)
    final = plane.final_report(job_id)
    assert final is not None
    assert (final["status"], final["step"]) == ("rolled_back", "smoke")
    assert "boom\ufffdzero" in final["message"]
    assert "\x00" not in final["message"]
