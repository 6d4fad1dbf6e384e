"""The agent trusts only signed answers that echo its nonce, backs off while the control plane
is down, and retries reports until they are acknowledged (also across a restart)."""

import asyncio
import re
import secrets

import pytest

from devstack.ports import free_port
from tests.conftest import LiveServer
from tests.fake_control_plane import FakeControlPlane
from tests.fixtures_agents import AgentFactory, AgentHost

Plane = tuple[FakeControlPlane, str]
ALL_STEPS = ["backup 1.1.0", "pull 1.1.0", "migrate 1.1.0", "smoke 1.1.0", "switch 1.1.0"]


async def _log_lines(host: AgentHost, pattern: str, count: int, timeout: float = 60) -> list[str]:
    """Poll the agent's log (no event to await) until `count` lines match `pattern`."""
    async with asyncio.timeout(timeout):
        while len(found := re.findall(pattern, host.log())) < count:
            await asyncio.sleep(0.05)
    return found


@pytest.mark.parametrize("misbehaviour", ["forge_signature", "wrong_nonce"])
async def test_untrusted_answers_are_never_acted_on(
    fake_control_plane: Plane, agent_host: AgentFactory, misbehaviour: str
) -> None:
    plane, url = fake_control_plane
    setattr(plane, misbehaviour, True)
    job_id = plane.add_job("host-1", "1.1.0")
    host = await agent_host(url, plane.secret)

    await plane.wait_until(lambda: len(plane.polls) >= 3)
    assert host.steps() == []
    assert plane.reports == []
    assert "answer ignored" in host.log()
    assert plane.secret not in host.log()

    # It kept polling: once answers are genuine again the same job runs.
    setattr(plane, misbehaviour, False)
    await plane.wait_until(lambda: plane.final_report(job_id) is not None)
    assert plane.final_report(job_id)["status"] == "succeeded"
    assert host.steps() == ALL_STEPS


async def test_backs_off_while_down_and_retries_reports_until_acknowledged(
    agent_host: AgentFactory,
) -> None:
    port = free_port()
    plane = FakeControlPlane(secret=secrets.token_hex(16))
    host = await agent_host(f"http://127.0.0.1:{port}", plane.secret)

    delays = [float(d) for d in await _log_lines(host, r"poll failed .*; retry in ([\d.]+) s", 5)]
    assert delays[:4] == sorted(delays[:4]), delays  # exponential, capped
    assert max(delays) <= 0.8
    assert delays[3] > delays[0]

    job_id = plane.add_job("host-1", "1.1.0")
    plane.unavailable_reports = 3
    async with LiveServer(plane.app(), port):
        await plane.wait_until(lambda: plane.final_report(job_id) is not None)
        assert plane.refused.count("503 report") == 3
        assert plane.reports_of(job_id)[0] == ("in_progress", "preflight")
        assert plane.final_report(job_id)["status"] == "succeeded"
        await _log_lines(host, "control plane answers again", 1)
    assert host.steps() == ALL_STEPS


async def test_unacknowledged_final_report_is_sent_after_a_restart(
    fake_control_plane: Plane, agent_host: AgentFactory
) -> None:
    plane, url = fake_control_plane
    job_id = plane.add_job("host-1", "1.1.0")
    plane.unavailable_reports = 10_000
    host = await agent_host(url, plane.secret)
    await host.wait_for_step("switch 1.1.0")
    async with asyncio.timeout(60):
        while not host.state()["unacknowledged"]:
            await asyncio.sleep(0.05)
    await host.kill_hard()

    plane.unavailable_reports = 0
    await host.start()
    await plane.wait_until(lambda: plane.final_report(job_id) is not None)
    assert plane.final_report(job_id)["status"] == "succeeded"
    assert host.steps() == ALL_STEPS
    async with asyncio.timeout(60):
        while host.state()["unacknowledged"]:
            await asyncio.sleep(0.05)


async def test_a_report_refused_as_stale_is_retried_not_lost(
    fake_control_plane: Plane, agent_host: AgentFactory
) -> None:
    plane, url = fake_control_plane
    job_id = plane.add_job("host-1", "1.1.0")
    plane.stale_final_reports = 3
    host = await agent_host(url, plane.secret)
    await plane.wait_until(lambda: plane.final_report(job_id) is not None)
    assert plane.refused.count("stale report") == 3
    assert plane.final_report(job_id)["status"] == "succeeded"
    assert host.steps() == ALL_STEPS


async def test_the_next_poll_waits_until_the_last_report_is_acknowledged(
    fake_control_plane: Plane, agent_host: AgentFactory
) -> None:
    """One request in flight per agent, so one connection: a batch of hosts ending together
    would otherwise hold two each at the control plane."""
    plane, url = fake_control_plane
    job_id = plane.add_job("host-1", "1.1.0")
    plane.stale_final_reports = 3  # the final report is refused three times, then taken
    await agent_host(url, plane.secret)
    await plane.wait_until(lambda: plane.final_report(job_id) is not None)
    await plane.wait_until(lambda: plane.arrivals[-1] == "poll")

    first_report = next(i for i, what in enumerate(plane.arrivals) if what.startswith("report"))
    the_job = plane.arrivals[first_report:]
    finals = [i for i, what in enumerate(the_job) if what == "report succeeded"]
    assert len(finals) == 4, the_job
    assert "poll" not in the_job[: finals[-1]], the_job
