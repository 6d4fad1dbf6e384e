"""A rollout whose workflow was closed from outside (Web UI "Terminate" or
"Request Cancellation", `temporal workflow terminate|cancel`) ends in the read model and frees
its channel. Real API over HTTP, dev server, real worker and reconciler, real PostgreSQL."""

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import is_cancelled_exception
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from server.settings import ApiSettings
from store import audit, jobs, rollout_targets, rollouts
from store.rollouts import Rollout
from temporal_client import rollouts as rollout_client
from tests.fixtures_temporal import eventually, seed_instances, seed_release
from tests.test_rollout_api import create
from worker.reconciler import reconcile_forever, reconcile_once
from workflows.rollout_models import JobReportSignal

RECONCILE_INTERVAL = 0.2


@pytest.fixture
async def reconciler(
    dev_env: WorkflowEnvironment, worker_pool: asyncpg.Pool
) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(reconcile_forever(dev_env.client, worker_pool, RECONCILE_INTERVAL))
    yield task
    task.cancel()


async def started_with_one_job_running(
    env: WorkflowEnvironment, admin: httpx.AsyncClient, release_id: str
) -> str:
    created = await create(admin, release_id)
    assert created.status_code == 201, created.text
    rollout_id = created.json()["id"]
    live = await rollout_client.live_view(env.client, rollout_id, timeout=10)
    first = live.jobs[0]
    running = JobReportSignal(
        job_id=first.id, instance_id=first.instance_id, status="in_progress", step="pull"
    )
    await rollout_client.report_job(env.client, rollout_id, running, timeout=10)
    return rollout_id


async def ended(db: asyncpg.Connection, rollout_id: str) -> Rollout:
    async def probe() -> Rollout | None:
        row = await rollouts.get(db, rollout_id)
        return row if row and row.workflow_closed else None

    return await eventually(probe)


async def test_terminated_workflow_is_recorded_as_ended_and_frees_the_channel(
    dev_env: WorkflowEnvironment,
    dev_worker: Worker,
    reconciler: asyncio.Task[None],
    dev_admin: httpx.AsyncClient,
    dev_settings: ApiSettings,
    worker_pool: asyncpg.Pool,
    db: asyncpg.Connection,
) -> None:
    release_id = await seed_release(db, dev_settings)
    await seed_instances(db, ["a", "b", "c"])
    rollout_id = await started_with_one_job_running(dev_env, dev_admin, release_id)
    await dev_env.client.get_workflow_handle(f"rollout-{rollout_id}").terminate("from the UI")

    row = await ended(db, rollout_id)
    assert row.status == "aborted"
    # What the workflow would have said, not what its run last wrote (running, 1 in progress).
    assert row.details == "batch 1/2 · 2 cancelled · aborted · workflow terminated in Temporal"
    assert [j.status for j in await jobs.for_rollout(db, rollout_id)] == ["cancelled"] * 2
    assert await rollout_targets.count(db, rollout_id) == 0  # nothing reads them any more
    entries = [e for e in await audit.for_subject(db, f"rollout:{rollout_id}")]
    closing = [e for e in entries if e.action == "rollout.workflow_closed"]
    assert [(e.actor, e.detail) for e in closing] == [
        ("temporal", {"how": "workflow terminated in Temporal", "jobs_cancelled": 2})
    ]
    shown = (await dev_admin.get(f"/api/rollouts/{rollout_id}")).json()
    assert shown["status"] == "aborted"
    refused = await dev_admin.post(f"/api/rollouts/{rollout_id}/abort")
    assert refused.status_code == 409, refused.text
    again = await create(dev_admin, release_id)
    assert again.status_code == 201, again.text


async def test_several_reconcilers_record_an_end_once(
    dev_env: WorkflowEnvironment,
    dev_worker: Worker,
    dev_admin: httpx.AsyncClient,
    dev_settings: ApiSettings,
    worker_pool: asyncpg.Pool,
    db: asyncpg.Connection,
) -> None:
    release_id = await seed_release(db, dev_settings)
    await seed_instances(db, ["a", "b"])
    rollout_id = await started_with_one_job_running(dev_env, dev_admin, release_id)
    handle = dev_env.client.get_workflow_handle(f"rollout-{rollout_id}")
    await handle.terminate("cli")
    rounds = await asyncio.gather(*(reconcile_once(dev_env.client, worker_pool) for _ in range(3)))
    assert sorted(r for found in rounds for r in found) == [rollout_id]
    actions = [e.action for e in await audit.for_subject(db, f"rollout:{rollout_id}")]
    assert actions.count("rollout.workflow_closed") == 1


async def test_request_cancellation_aborts_the_rollout(
    dev_env: WorkflowEnvironment,
    dev_worker: Worker,
    dev_admin: httpx.AsyncClient,
    dev_settings: ApiSettings,
    worker_pool: asyncpg.Pool,
    db: asyncpg.Connection,
) -> None:
    release_id = await seed_release(db, dev_settings)
    await seed_instances(db, ["a", "b", "c"])
    rollout_id = await started_with_one_job_running(dev_env, dev_admin, release_id)
    handle = dev_env.client.get_workflow_handle(f"rollout-{rollout_id}")
    await handle.cancel()

    row = await ended(db, rollout_id)  # written by the workflow itself, no reconciler here
    assert row.status == "aborted"
    assert "cancellation requested in Temporal" in row.details
    with pytest.raises(WorkflowFailureError) as closed:
        await handle.result()
    assert is_cancelled_exception(closed.value.cause)  # the run closed as cancelled
    assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED
    assert [j.status for j in await jobs.for_rollout(db, rollout_id)] == ["cancelled"] * 2
    aborts = [
        (e.actor, e.detail)
        for e in await audit.for_subject(db, f"rollout:{rollout_id}")
        if e.action == "rollout.abort"
    ]
    assert aborts == [("temporal", {"reason": "cancellation requested in Temporal"})]
    assert await reconcile_once(dev_env.client, worker_pool) == []
    refused = await dev_admin.post(f"/api/rollouts/{rollout_id}/abort")
    assert refused.status_code == 409, refused.text
    again = await create(dev_admin, release_id)
    assert again.status_code == 201, again.text


async def test_a_reset_run_is_not_an_end(
    dev_env: WorkflowEnvironment,
    dev_worker: Worker,
    dev_admin: httpx.AsyncClient,
    dev_settings: ApiSettings,
    worker_pool: asyncpg.Pool,
    db: asyncpg.Connection,
) -> None:
    """Terminated, then reset in the Web UI before the reconciler looked: the latest run runs."""
    release_id = await seed_release(db, dev_settings)
    await seed_instances(db, ["a", "b"])
    rollout_id = await started_with_one_job_running(dev_env, dev_admin, release_id)
    client = dev_env.client
    handle = client.get_workflow_handle(f"rollout-{rollout_id}")
    await handle.terminate("oops")
    history = await handle.fetch_history()
    first_task = next(
        event.event_id
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
    )
    await client.workflow_service.reset_workflow_execution(
        ResetWorkflowExecutionRequest(
            namespace=client.namespace,
            workflow_execution=WorkflowExecution(workflow_id=handle.id),
            reason="test",
            workflow_task_finish_event_id=first_task,
            request_id=uuid.uuid4().hex,
        )
    )
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
    assert await reconcile_once(client, worker_pool) == []
    row = await rollouts.get(db, rollout_id)
    assert row is not None and (row.status, row.workflow_closed) == ("running", False)
