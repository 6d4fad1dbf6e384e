"""An agent whose state directory stops taking writes (read-only, permissions changed under it)
cannot journal its steps: it runs nothing more, reports the job in flight failed with the reason
while it can still reach the control plane, and exits 2 with one line, at once again on every
restart (systemd's RestartPreventExitStatus=2: no restart loop), never with a traceback."""

import signal
from pathlib import Path

from tests.fake_control_plane import FakeControlPlane
from tests.fixtures_agents import AgentFactory, AgentHost

Plane = tuple[FakeControlPlane, str]


def error_lines(host: AgentHost) -> list[str]:
    return [line for line in host.log().splitlines() if line.startswith("rollout agent: error:")]


def unusable_line(state_dir: Path, file: str) -> str:
    return (
        f"rollout agent: error: AGENT_STATE_DIR {state_dir} cannot be written: Permission denied"
        f" ({state_dir / file}); the agent journals every step there and runs none until it can"
    )


async def test_a_state_dir_turned_read_only_mid_job_stops_the_agent_with_the_job_failed(
    fake_control_plane: Plane, agent_host: AgentFactory
) -> None:
    plane, url = fake_control_plane
    host = await agent_host(url, plane.secret, block_at="pull", permissions_apply=True)
    job_id = plane.add_job("host-1", "2.0.0")
    await host.wait_blocked("pull")
    host.state_dir.chmod(0o500)  # the journal's next write, before migrate, is refused
    host.open_gate()

    assert await host.wait_exit() == 2
    final = plane.final_report(job_id)
    assert final is not None and (final["status"], final["step"]) == ("failed", "pull")
    assert final["message"].startswith("agent stopped: AGENT_STATE_DIR ")
    assert final["message"].endswith(
        "no rollback was run: the host is as pull left it; the agent rolls it back when it"
        " starts with the directory writable again"
    )
    assert host.steps() == ["backup 2.0.0", "pull 2.0.0"]  # nothing ran after the refusal
    assert host.current() == "1.0.0"
    assert "Traceback" not in host.log()
    assert error_lines(host) == [unusable_line(host.state_dir, "state.tmp")]

    # Restarted (by hand: the unit does not restart on 2), still read-only: the journal's job
    # is reported failed again (the same report: the control plane takes it once), exit 2.
    reports_before = len(plane.reports)
    await host.start()
    assert await host.wait_exit() == 2
    assert "Traceback" not in host.log()
    assert error_lines(host) == [unusable_line(host.state_dir, "state.tmp")] * 2
    assert host.steps() == ["backup 2.0.0", "pull 2.0.0"]
    again = plane.reports[reports_before:]
    assert [(r["status"], r["step"]) for r in again] == [("failed", "pull")]

    # Writable again: the agent finishes the journal's story (rolls back) and runs on.
    host.state_dir.chmod(0o700)
    await host.start()
    await host.wait_for_step("rollback 2.0.0")
    assert host.current() == "1.0.0"


async def test_a_read_only_state_dir_at_start_is_exit_2_with_one_line(
    fake_control_plane: Plane, agent_host: AgentFactory
) -> None:
    plane, url = fake_control_plane
    host = await agent_host(url, plane.secret, permissions_apply=True)
    await plane.wait_until(lambda: len(plane.polls) >= 1)  # the journal and locks exist
    host.send(signal.SIGTERM)
    assert await host.wait_exit() == 0
    host.state_dir.chmod(0o500)

    await host.start()
    assert await host.wait_exit() == 2
    assert "Traceback" not in host.log()
    assert error_lines(host) == [unusable_line(host.state_dir, "state.tmp")]
