"""What the workflow asks of PostgreSQL besides writing its progress, as activities: the targets
snapshot taken at start, a batch's hosts read from it, and the steps overdue jobs reached.
Workflow code, kept apart from the run loop."""

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities.gates import GateActivities
    from activities.reverts import RevertActivities
    from activities.rollouts import RolloutActivities
    from domain.gates import GateResult, unreachable
    from domain.rollouts import RolloutSpec
    from workflows.activity_options import (
        ACTIVITY_RETRY,
        CHUNK_TIMEOUT,
        HEARTBEAT_TIMEOUT,
        SNAPSHOT_TIMEOUT,
    )
    from workflows.read_model_writer import JOBS_PER_WRITE
    from workflows.rollout_models import (
        AutoRevertInput,
        BatchTargetsInput,
        JobState,
        LateTargetsInput,
        ReportedStepsInput,
        SnapshotTargetsInput,
        WatchGatesInput,
    )

# A batch's ids are one indexed range, read as a local activity in the task that starts the
# batch (an advance waits on one activity round trip, the jobs' write, not two): longer than
# this is an outage, retried after a durable timer (threshold 0), so queries and updates are
# answered between attempts.
BATCH_READ_TIMEOUT = timedelta(seconds=5)
# Beyond a gate's probing time: its slowest probe (tries at a source that cannot be reached).
GATE_MARGIN_SECONDS = 60
# A look-up that only improves a message must not hold the rollout up for long.
LOOKUP_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3)


async def snapshot_targets(spec: RolloutSpec) -> int:
    """Stores the rollout's targets (once) and returns their number: nothing carried grows with
    the fleet."""
    result = await workflow.execute_activity_method(
        RolloutActivities.snapshot_targets,
        SnapshotTargetsInput(rollout_id=spec.id, channel=spec.channel, version=spec.version),
        start_to_close_timeout=SNAPSHOT_TIMEOUT,
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
        retry_policy=ACTIVITY_RETRY,
        summary=f"snapshot the hosts on {spec.channel} below {spec.version}",
    )
    return result.target_count


async def late_targets(spec: RolloutSpec) -> int:
    """Appends the hosts that joined the channel below the version since the start; the
    targets' count now."""
    result = await workflow.execute_activity_method(
        RolloutActivities.late_targets,
        LateTargetsInput(rollout_id=spec.id, channel=spec.channel, version=spec.version),
        start_to_close_timeout=SNAPSHOT_TIMEOUT,
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
        retry_policy=ACTIVITY_RETRY,
        summary=f"hosts that joined {spec.channel} below {spec.version} since the start",
    )
    return result.target_count


async def watch_gates(spec: RolloutSpec, until: datetime, now: datetime) -> list[GateResult]:
    """The gates' results through the bake; when the probing itself cannot run (no worker can
    reach its sources for long), every gate counts as failing: a blind rollout does not go on."""
    bake = max(0.0, (until - now).total_seconds())
    try:
        result = await workflow.execute_activity_method(
            GateActivities.watch_gates,
            WatchGatesInput(
                gates=spec.gates, until=until, interval_seconds=spec.gate_interval_seconds
            ),
            start_to_close_timeout=timedelta(seconds=bake + GATE_MARGIN_SECONDS),
            heartbeat_timeout=timedelta(seconds=spec.gate_interval_seconds + GATE_MARGIN_SECONDS),
            retry_policy=LOOKUP_RETRY,
            summary=f"watch {len(spec.gates)} health gates for {bake:.0f} s",
        )
    except ActivityError as err:
        if is_cancelled_exception(err):
            raise
        return [unreachable(gate, "the probe did not run") for gate in spec.gates]
    return result.results


async def batch_hosts(rollout_id: str, number: int, start: int, size: int) -> list[str]:
    """The instance ids of batch `number` (`size` of them from offset `start`), in the
    snapshot's order."""
    result = await workflow.execute_local_activity_method(
        RolloutActivities.batch_targets,
        BatchTargetsInput(rollout_id=rollout_id, start=start, limit=size),
        start_to_close_timeout=BATCH_READ_TIMEOUT,
        retry_policy=ACTIVITY_RETRY,
        local_retry_threshold=timedelta(0),
        summary=f"read the hosts of batch {number}",
    )
    return result.instance_ids


async def reported_steps(jobs: list[JobState]) -> dict[str, str]:
    """Where each job's agent last said it was: only the acknowledged reports know, as the
    workflow hears of a job starting and ending, not of each step. Should the read model not
    answer, the workflow's own step stands (the job is missing from the answer)."""
    steps: dict[str, str] = {}
    for start in range(0, len(jobs), JOBS_PER_WRITE):
        chunk = jobs[start : start + JOBS_PER_WRITE]
        try:
            result = await workflow.execute_activity_method(
                RolloutActivities.reported_steps,
                ReportedStepsInput(job_ids=[job.id for job in chunk]),
                start_to_close_timeout=CHUNK_TIMEOUT,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=LOOKUP_RETRY,
                summary=f"the steps {len(chunk)} overdue jobs reached",
            )
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise
            break
        steps.update(result.steps)
    return steps


async def prepare_auto_revert(spec: RolloutSpec, reason: str) -> RolloutSpec | None:
    """The revert of the hosts the rollout updated, stored (once) for the workflow to start;
    None when there is none (why is audited)."""
    result = await workflow.execute_activity_method(
        RevertActivities.prepare_auto_revert,
        AutoRevertInput(rollout_id=spec.id, reason=reason),
        start_to_close_timeout=SNAPSHOT_TIMEOUT,
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
        retry_policy=ACTIVITY_RETRY,
        summary="store the revert of the hosts it updated (autoRevert)",
    )
    return result.spec
