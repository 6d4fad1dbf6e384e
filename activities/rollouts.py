"""Activities of RolloutWorkflow: read targets, write the read model. Idempotent by design:
job rows only move forward and the rollout row carries a revision that gates its audit entries,
so a retried or repeated call changes nothing twice."""

import asyncpg
from temporalio import activity

from store import audit, instances, jobs, rollouts
from workflows.rollout_models import (
    LoadTargetsInput,
    LoadTargetsResult,
    RecordProgressInput,
    RecordProgressResult,
)


class RolloutActivities:
    """Holds the worker's pool; its methods are registered as activities."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @activity.defn(name="load_targets")
    async def load_targets(self, input: LoadTargetsInput) -> LoadTargetsResult:
        ids = await instances.targets_below(self.pool, channel=input.channel, version=input.version)
        return LoadTargetsResult(instance_ids=ids)

    @activity.defn(name="record_progress")
    async def record_progress(self, input: RecordProgressInput) -> RecordProgressResult:
        async with self.pool.acquire() as conn, conn.transaction():
            await jobs.upsert_many(conn, input.jobs)
            if input.progress is None:
                return RecordProgressResult(applied=True)
            applied = await rollouts.record_progress(conn, input.progress)
            if applied:
                for event in input.events:
                    await audit.record(
                        conn,
                        actor=event.actor,
                        action=event.action,
                        subject=f"rollout:{input.progress.id}",
                        detail=event.detail,
                    )
            return RecordProgressResult(applied=applied)
