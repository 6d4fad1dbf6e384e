"""A fleet revert: which hosts a rollout touched go back to what they ran before, and why the
others do not. Decided here from what the registry says of each host now; services.reverts does
the rest (the abort, the rows, the workflow)."""

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel

SkipReason = Literal[
    "still_running",
    "no_previous_release",
    "agent_too_old",
    "other_channel",
    "on_hold",
    "pending",
    "decommissioned",
    "not_seen",
]


class TouchedHost(BaseModel):
    """A host that had a job in the reverted rollout, as the registry knows it now."""

    instance_id: str
    # What it ran before its first job in that rollout, and that version's release on the
    # channel (None: never uploaded there).
    previous_version: str | None
    previous_release_id: str | None
    job_open: bool  # its latest job in that rollout is still pending or in progress
    # What its job in that rollout installs: the rollout's release, or for a revert's job its
    # own (a revert of a revert takes each host back from where its job took it).
    job_version: str
    # What it runs now: its last poll's version, or what a job that succeeded since installed
    # (a host polls its new version in only once its job has ended).
    running_version: str
    channel: str
    accepts_downgrade: bool  # its agent declares the `downgrade` capability
    state: str
    held: bool
    last_seen_at: datetime


@dataclass
class RevertPlan:
    """Each host going back and its release, in instance-id order; the others by reason."""

    targets: list[tuple[str, str]] = field(default_factory=list)  # (instance, release id)
    skipped: dict[SkipReason, list[str]] = field(default_factory=dict)
    # Hosts the rollout touched that do not run its version now: not updated (rolled back,
    # cancelled, unreachable) or moved on since. Nothing to revert on them.
    not_on_version: int = 0

    def skip(self, reason: SkipReason, instance_id: str) -> None:
        self.skipped.setdefault(reason, []).append(instance_id)

    def main_release(self) -> str | None:
        """The release most hosts go back to: the revert's `manifestId`."""
        counts = Counter(release for _, release in self.targets)
        return min(counts, key=lambda r: (-counts[r], r)) if counts else None


def plan_revert(
    hosts: list[TouchedHost], *, channel: str, now: datetime, stale_after_seconds: int
) -> RevertPlan:
    """The hosts that still run what their job installed go back to their previous release,
    unless one of SkipReason holds; the checks come in the order an operator would fix them in."""
    plan = RevertPlan()
    stale_before = now - timedelta(seconds=stale_after_seconds)
    for host in hosts:
        if host.running_version != host.job_version:
            if host.job_open:
                plan.skip("still_running", host.instance_id)
            else:
                plan.not_on_version += 1
            continue
        if host.state != "active":
            plan.skip(host.state, host.instance_id)  # type: ignore[arg-type]  # pending, decommissioned
        elif host.held:
            plan.skip("on_hold", host.instance_id)
        elif stale_after_seconds and host.last_seen_at < stale_before:
            plan.skip("not_seen", host.instance_id)
        elif host.channel != channel:
            plan.skip("other_channel", host.instance_id)
        elif host.previous_release_id is None:
            plan.skip("no_previous_release", host.instance_id)
        elif not host.accepts_downgrade:
            plan.skip("agent_too_old", host.instance_id)
        else:
            plan.targets.append((host.instance_id, host.previous_release_id))
    return plan
