"""What one simulation run is asked to do; the CLI builds it from flags, tests build it directly."""

from collections.abc import Mapping
from dataclasses import dataclass, field

from contract.wire import UPDATE_STEPS, Step

SIMULATED_STEPS: tuple[Step, ...] = (*UPDATE_STEPS, "rollback")


@dataclass(frozen=True)
class SimulationOptions:
    control_plane_url: str
    agents: int
    # Each agent's secret by instance id; `default_secret` for instances not listed.
    default_secret: str | None = field(default=None, repr=False)
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    prefix: str = "sim"
    channel: str = "stable"
    version: str = "1.0.0"
    step_seconds: float = 0.2
    step_seconds_for: Mapping[str, float] = field(default_factory=dict)
    fail_rates: Mapping[str, float] = field(default_factory=dict)
    poll_interval: float = 5.0
    seed: int | None = None
    # Stopping rules: whichever comes first (none: until `stop` is set, e.g. Ctrl-C).
    duration: float | None = None
    until_rollout: str | None = None
    until_idle: bool = False
    idle_seconds: float = 5.0
    # Jobs under way when a rule fires get this long to finish before the agents stop.
    grace_seconds: float = 30.0
    # Rollouts are read through the admin API when a token is given.
    admin_token: str | None = field(default=None, repr=False)
    track_rollout: str | None = None
    summary_interval: float = 1.0
    # Simulator processes, each its own event loop; None: one per 200 agents, at most one a core.
    processes: int | None = None

    def instance_ids(self) -> list[str]:
        width = max(3, len(str(self.agents)))
        return [f"{self.prefix}-{n:0{width}d}" for n in range(1, self.agents + 1)]

    def secret_for(self, instance_id: str) -> str:
        secret = self.secrets.get(instance_id, self.default_secret)
        if secret is None:
            raise ValueError(f"no secret for {instance_id}")
        return secret

    def mean_seconds(self, step: Step) -> float:
        return self.step_seconds_for.get(step, self.step_seconds)
