"""RolloutWorkflow on the time-skipping server, with a real worker and real PostgreSQL."""

import uuid

import asyncpg
import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from contract.settings import ApiSettings
from store import audit, jobs, rollouts
from store.rollouts import RolloutSpec
from tests.fixtures_temporal import eventually, seed_instances, seed_release
from workflows import client as rollout_client
from workflows.rollout_models import JobReportSignal, JobState, RolloutView

TIMEOUT = 15.0


async def start(
    client: Client,
    db: asyncpg.Connection,
    settings: ApiSettings,
    instances: list[str],
    **options: object,
) -> RolloutSpec:
    release_id = await seed_release(db, settings)
    await seed_instances(db, instances)
    spec = RolloutSpec(
        id=uuid.uuid4().hex,
        manifest_id=release_id,
        version="1.4.0",
        channel="stable",
        created_by="test",
        **{"batch_size": 2, **options},  # type: ignore[arg-type]
    )
    await rollouts.insert(db, spec)
    await rollout_client.start_rollout(
        client, spec, task_queue=settings.temporal_task_queue, timeout=TIMEOUT
    )
    return spec


async def view(client: Client, spec: RolloutSpec) -> RolloutView:
    return await rollout_client.live_view(client, spec.id, timeout=TIMEOUT)


async def settles_to(client: Client, spec: RolloutSpec, status: str) -> RolloutView:
    """The view once the workflow has processed what was sent and reached `status`."""

    async def probe() -> RolloutView | None:
        current = await view(client, spec)
        return current if current.status == status else None

    return await eventually(probe)


async def report(
    client: Client, spec: RolloutSpec, job: JobState, status: str, step: str | None = "health"
) -> None:
    signal = JobReportSignal(job_id=job.id, instance_id=job.instance_id, status=status, step=step)  # type: ignore[arg-type]
    await rollout_client.report_job(client, spec.id, signal, timeout=TIMEOUT)


async def act(client: Client, spec: RolloutSpec, action: str, reason: str | None = None) -> str:
    result = await rollout_client.run_action(
        client,
        spec.id,
        action,
        rollout_client.action_input(action, "tester", reason),
        timeout=TIMEOUT,
    )
    return result.status


async def succeed_all(client: Client, spec: RolloutSpec) -> None:
    for job in (await view(client, spec)).jobs:
        if job.status in ("pending", "in_progress"):
            await report(client, spec, job, "in_progress", "preflight")
            await report(client, spec, job, "succeeded")


async def test_batches_move_to_completed_by_advance(
    time_skipping_env: WorkflowEnvironment,
    ts_worker: Worker,
    ts_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    client = time_skipping_env.client
    spec = await start(client, db, ts_settings, ["web-1", "web-2", "web-3", "web-4", "web-5"])
    first = await view(client, spec)
    assert (first.status, first.current_batch, first.total_batches) == ("running", 1, 3)
    assert [j.instance_id for j in first.jobs] == ["web-1", "web-2"]
    assert all(j.status == "pending" for j in first.jobs)

    with pytest.raises(rollout_client.ActionRefused, match="batch 1/3 is still running"):
        await act(client, spec, "advance")

    await succeed_all(client, spec)
    await settles_to(client, spec, "awaiting_advance")
    assert await act(client, spec, "advance") == "running"
    second = await view(client, spec)
    assert second.current_batch == 2
    assert [j.instance_id for j in second.jobs] == ["web-3", "web-4"]
    await succeed_all(client, spec)
    await settles_to(client, spec, "awaiting_advance")
    await act(client, spec, "advance")
    await succeed_all(client, spec)
    done = await settles_to(client, spec, "completed")
    assert done.details.startswith("batch 3/3 · 5 succeeded")

    async def row_final() -> rollouts.Rollout | None:
        row = await rollouts.get(db, spec.id)
        return row if row and row.workflow_closed else None

    row = await eventually(row_final)
    assert (row.status, row.current_batch, row.total_batches) == ("completed", 3, 3)
    stored = await jobs.for_rollout(db, spec.id)
    assert [(j.instance_id, j.batch, j.status) for j in stored] == [
        ("web-1", 1, "succeeded"),
        ("web-2", 1, "succeeded"),
        ("web-3", 2, "succeeded"),
        ("web-4", 2, "succeeded"),
        ("web-5", 3, "succeeded"),
    ]
    actions = [e.action for e in await audit.for_subject(db, f"rollout:{spec.id}")]
    assert actions.count("rollout.advance") == 2
    assert actions.count("rollout.batch_released") == 3
    assert "rollout.status_changed" in actions
