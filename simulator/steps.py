"""Simulated update steps: a jittered wait and a seeded coin toss per step, no shell, no files."""

import asyncio
import random
from collections.abc import Mapping

from agent.steps import StepContext, StepResult
from contract.wire import Step

# A step lasts between half and one and a half times its mean.
JITTER = 0.5


class SimulatedSteps:
    """A `StepExecutor` for one simulated host; its own RNG keeps a seeded run reproducible."""

    can_roll_back = True
    can_restore = False  # simulated hosts keep no data

    def __init__(
        self,
        mean_seconds: Mapping[str, float],
        fail_rates: Mapping[str, float],
        rng: random.Random,
    ) -> None:
        self.mean_seconds = mean_seconds
        self.fail_rates = fail_rates
        self.rng = rng

    async def run(self, step: Step, context: StepContext) -> StepResult:
        mean = self.mean_seconds[step]
        seconds = mean * self.rng.uniform(1 - JITTER, 1 + JITTER)
        fails = self.rng.random() < self.fail_rates.get(step, 0.0)
        await asyncio.sleep(seconds)
        if fails:
            return StepResult(
                False, f"simulated {step} failure for {context.manifest.version}", "simulated\n"
            )
        return StepResult(True, f"simulated {step} in {seconds:.3f} s")
