"""Many agents in one process (how a fleet simulator drives them): each with its own journal in
memory and a pluggable step executor, all in one event loop, and all stop on one event."""

import asyncio
from dataclasses import dataclass, field

from agent.config import AgentConfig
from agent.daemon import Agent
from agent.journal import Journal
from agent.steps import StepContext, StepResult
from contract.wire import Step
from tests.fake_control_plane import FakeControlPlane

Plane = tuple[FakeControlPlane, str]


@dataclass
class SimulatedSteps:
    """Steps that take a moment and fail where told: no shell, no files."""

    fail_at: Step | None = None
    ran: list[Step] = field(default_factory=list)
    can_roll_back: bool = True
    can_restore: bool = False

    async def run(self, step: Step, context: StepContext) -> StepResult:
        self.ran.append(step)
        await asyncio.sleep(0.01)
        if step == self.fail_at:
            return StepResult(False, f"simulated {step} failure for {context.manifest.version}")
        return StepResult(True, "simulated")


async def test_twenty_agents_share_one_loop(fake_control_plane: Plane) -> None:
    plane, url = fake_control_plane
    stop = asyncio.Event()
    agents: list[tuple[str, SimulatedSteps, Agent]] = []
    for number in range(20):
        instance_id = f"sim-{number:02d}"
        steps = SimulatedSteps(fail_at="smoke" if number % 4 == 0 else None)
        config = AgentConfig(
            control_plane_url=url,
            instance_id=instance_id,
            secret=plane.secret,
            commands={},
            poll_interval_seconds=0.1,
            backoff_initial_seconds=0.05,
            backoff_max_seconds=0.5,
        )
        journal = Journal.open(None, first_run_version="1.0.0")
        agents.append(
            (
                plane.add_job(instance_id, "2.0.0"),
                steps,
                Agent(config, executor=steps, journal=journal),
            )
        )

    runs = [asyncio.create_task(agent.run(stop)) for _, _, agent in agents]
    await plane.wait_until(
        lambda: all(plane.final_report(job_id) is not None for job_id, _, _ in agents)
    )
    stop.set()
    async with asyncio.timeout(10):
        await asyncio.gather(*runs)

    for job_id, steps, agent in agents:
        final = plane.final_report(job_id)
        if steps.fail_at is None:
            assert (final["status"], final["step"]) == ("succeeded", "health")
            assert agent.journal.state.current_version == "2.0.0"
        else:
            assert (final["status"], final["step"]) == ("rolled_back", "smoke")
            assert steps.ran[-1] == "rollback"
            assert agent.journal.state.current_version == "1.0.0"
