"""Rollouts whose workflow was closed from outside: Web UI "Terminate", `temporal workflow
terminate`, a run that failed or timed out. No workflow code runs then, so the read model
would say `running` for ever and block the channel. The worker looks every
RECONCILE_INTERVAL_SECONDS and records such rollouts as ended.

Safe with several workers: the write is guarded by `workflow_closed`, so it applies once. The
rollout's details are written anew, as the workflow would have said it (`aborted`, the jobs
counted once the open ones are cancelled, how it closed), not what the run last wrote.
"""

import asyncio
import logging
from datetime import timedelta

import asyncpg
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from store import audit, jobs, rollout_targets, rollouts
from workflows import rollout_text

# How each way of closing is recorded. Completed and continued-as-new are not ends from
# outside (describing the id without a run id gives the latest run; a reset is a new run).
CLOSED_FROM_OUTSIDE = {
    WorkflowExecutionStatus.TERMINATED: "workflow terminated in Temporal",
    WorkflowExecutionStatus.CANCELED: "workflow cancelled in Temporal",
    WorkflowExecutionStatus.FAILED: "workflow failed in Temporal",
    WorkflowExecutionStatus.TIMED_OUT: "workflow timed out in Temporal",
}
DESCRIBE_TIMEOUT = timedelta(seconds=5)
ACTOR = "temporal"
log = logging.getLogger("rollout.reconciler")


async def reconcile_once(client: Client, pool: asyncpg.Pool) -> list[str]:
    """End every rollout whose latest run closed from outside; the ids it ended."""
    ended = []
    for rollout_id, workflow_id in await rollouts.with_open_workflow(pool):
        try:
            described = await client.get_workflow_handle(workflow_id).describe(
                rpc_timeout=DESCRIBE_TIMEOUT
            )
        except RPCError as exc:
            log.warning("rollout %s: cannot describe %s: %s", rollout_id, workflow_id, exc.message)
            continue
        how = CLOSED_FROM_OUTSIDE.get(described.status) if described.status else None
        if how is not None and await _record_end(pool, rollout_id, how):
            ended.append(rollout_id)
    return ended


async def _record_end(pool: asyncpg.Pool, rollout_id: str, how: str) -> bool:
    async with pool.acquire() as conn, conn.transaction():
        row = await rollouts.end_closed_workflow(conn, rollout_id)
        if row is None:
            return False
        cancelled = await jobs.cancel_open(conn, rollout_id)
        counts = await jobs.latest_counts_before(conn, rollout_id, row.current_batch + 1)
        details = rollout_text.details(
            status=row.status,
            paused_reason=None,
            note=how,
            current_batch=row.current_batch,
            total_batches=row.total_batches,
            counts=counts,
        )
        await rollouts.set_details(conn, rollout_id, details)
        await rollout_targets.drop(conn, rollout_id)
        await audit.record(
            conn,
            actor=ACTOR,
            action="rollout.workflow_closed",
            subject=f"rollout:{rollout_id}",
            detail={"how": how, "jobs_cancelled": cancelled},
        )
    log.warning(
        "rollout %s: %s; recorded as ended, %d open jobs cancelled", rollout_id, how, cancelled
    )
    return True


async def reconcile_forever(client: Client, pool: asyncpg.Pool, interval: float) -> None:
    """Runs until cancelled; a failed round (Temporal or PostgreSQL down) is tried again."""
    while True:
        try:
            await reconcile_once(client, pool)
        except (OSError, asyncpg.PostgresError, RPCError) as exc:
            log.warning("reconciling rollouts failed, trying again in %gs: %s", interval, exc)
        await asyncio.sleep(interval)
