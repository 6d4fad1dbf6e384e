"""The agent's side of held polls (docs/protocol.md "Held polls"), against the fake control
plane: it asks for a hold only once offered, gets a job as it is released however long its
poll interval, and polls again at once only after a hold ran its full time."""

import asyncio

from agent.config import AgentConfig
from agent.daemon import LONG_POLL_SECONDS, Agent
from agent.journal import Journal
from agent.timing import hold_asked
from tests.fake_control_plane import FakeControlPlane
from tests.test_agent_in_process import SimulatedSteps

Plane = tuple[FakeControlPlane, str]
AN_HOUR = 3600.0


def _agent(plane: FakeControlPlane, url: str, poll_interval: float) -> Agent:
    config = AgentConfig(
        control_plane_url=url,
        instance_id="web-1",
        secret=plane.secret,
        commands={},
        poll_interval_seconds=poll_interval,
        backoff_initial_seconds=0.05,
        backoff_max_seconds=0.5,
    )
    journal = Journal.open(None, first_run_version="1.0.0")
    return Agent(config, executor=SimulatedSteps(), journal=journal)


async def _running(agent: Agent, stop: asyncio.Event) -> asyncio.Task[None]:
    return asyncio.create_task(agent.run(stop))


async def _stopped(run: asyncio.Task[None], stop: asyncio.Event) -> None:
    stop.set()
    async with asyncio.timeout(10):
        await run


async def test_against_an_api_that_offers_no_holds_the_agent_polls_plainly(
    fake_control_plane: Plane,
) -> None:
    plane, url = fake_control_plane  # answers like an API older than held polls
    stop = asyncio.Event()
    run = await _running(_agent(plane, url, poll_interval=0.05), stop)
    await plane.wait_until(lambda: len(plane.polls) >= 3)
    job_id = plane.add_job("web-1", "2.0.0")
    await plane.wait_until(lambda: plane.final_report(job_id) is not None)
    await _stopped(run, stop)

    assert set(plane.poll_waits) == {None}
    assert plane.final_report(job_id)["status"] == "succeeded"  # type: ignore[index]


async def test_once_offered_a_held_poll_gets_the_job_as_it_is_released(
    fake_control_plane: Plane,
) -> None:
    """With an hour between polls, only a held poll can bring the job within the test."""
    plane, url = fake_control_plane
    plane.long_poll_seconds = 20
    stop = asyncio.Event()
    run = await _running(_agent(plane, url, poll_interval=AN_HOUR), stop)
    await plane.wait_until(lambda: len(plane.polls) == 2)  # the second one is held
    job_id = plane.add_job("web-1", "2.0.0")
    await plane.wait_until(lambda: plane.final_report(job_id) is not None)
    await _stopped(run, stop)

    # The held poll brought the job: no other poll was sent. Asked only after the offer, and at
    # most that long (the first hold anything up to it: agents that start together spread).
    assert plane.poll_waits[0] is None and 1 <= int(plane.poll_waits[1] or 0) <= 20
    assert len(plane.poll_waits) == 2
    assert plane.final_report(job_id)["status"] == "succeeded"  # type: ignore[index]


async def test_a_hold_that_ran_out_is_followed_by_the_next_at_once_and_no_sooner(
    fake_control_plane: Plane,
) -> None:
    plane, url = fake_control_plane
    plane.long_poll_seconds = 1
    stop = asyncio.Event()
    started = asyncio.get_running_loop().time()
    run = await _running(_agent(plane, url, poll_interval=AN_HOUR), stop)
    await plane.wait_until(lambda: len(plane.polls) == 4)
    three_holds = asyncio.get_running_loop().time() - started
    await _stopped(run, stop)

    assert plane.poll_waits == [None, "1", "1", "1"]
    assert three_holds >= 2.0  # the second and third ran their full second before the next


async def test_an_offer_past_its_own_bound_is_asked_for_at_the_agents_bound(
    fake_control_plane: Plane,
) -> None:
    plane, url = fake_control_plane
    plane.long_poll_seconds = 3600
    stop = asyncio.Event()
    run = await _running(_agent(plane, url, poll_interval=AN_HOUR), stop)
    await plane.wait_until(lambda: len(plane.polls) == 2)
    await _stopped(run, stop)  # a stop ends the held poll at once

    assert plane.poll_waits[0] is None and len(plane.poll_waits) == 2
    assert 1 <= int(plane.poll_waits[1] or 0) <= LONG_POLL_SECONDS


def test_agents_that_start_together_ask_for_holds_of_spread_lengths() -> None:
    """Their holds run out at different times, so their next polls do not arrive together: the
    first over the whole offer, the later ones within a fifth of it, so they stay apart."""
    first = [hold_asked(LONG_POLL_SECONDS, first=True) for _ in range(1000)]
    later = [hold_asked(LONG_POLL_SECONDS, first=False) for _ in range(1000)]
    assert min(first) >= 1 and max(first) <= LONG_POLL_SECONDS
    assert len(set(first)) >= LONG_POLL_SECONDS // 2  # 25 lengths, each about 40 of 1,000
    assert min(later) >= LONG_POLL_SECONDS * 0.8 and max(later) <= LONG_POLL_SECONDS
    assert len(set(later)) >= 4  # 20 to 25: six lengths, each about a sixth of the fleet
    for first_hold in (True, False):  # nothing offered; one second is one second
        assert (hold_asked(0, first=first_hold), hold_asked(1, first=first_hold)) == (0, 1)
