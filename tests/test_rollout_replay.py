"""Replay: histories recorded from real runs must replay on the current RolloutWorkflow, so a
change that would break running rollouts (non-determinism) fails CI.

Re-record after an intended, compatible change (or to add scenarios):
    ROLLOUT_RECORD_HISTORIES=1 .venv/bin/pytest tests/test_rollout_replay.py
which runs the scenarios below on the time-skipping server and writes tests/histories/*.json.
Keep the old files too when the change must stay compatible with rollouts already running.
"""

import asyncio
import os
from pathlib import Path

import asyncpg
import pytest
from temporalio.client import Client, WorkflowFailureError, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import is_cancelled_exception
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from contract.settings import ApiSettings
from store.rollouts import RolloutSpec
from tests.fixtures_temporal import eventually, seed_instances, skip_time
from tests.test_rollout_workflow import act, outcome, report, settles_to, start, view
from workflows import client as rollout_client
from workflows.rollout import RolloutWorkflow
from workflows.rollout_models import AbortInput, JobReportSignal, PauseInput

HISTORIES = Path(__file__).parent / "histories"
RECORDING = os.environ.get("ROLLOUT_RECORD_HISTORIES") == "1"


async def replay(history: WorkflowHistory) -> None:
    replayer = Replayer(workflows=[RolloutWorkflow], data_converter=pydantic_data_converter)
    await replayer.replay_workflow(history)  # raises on non-determinism


async def test_recorded_histories_replay_on_the_current_workflow() -> None:
    files = sorted(HISTORIES.glob("*.json"))
    assert {f.stem for f in files} >= {"lifecycle", "abort"}, "recorded histories are missing"
    for file in files:
        await replay(WorkflowHistory.from_json(f"rollout-{file.stem}", file.read_text()))


async def keep(client: Client, spec: RolloutSpec, name: str) -> None:
    """Replay the run just made; write it to tests/histories when re-recording."""
    history = await client.get_workflow_handle(f"rollout-{spec.id}").fetch_history()
    await replay(history)
    if RECORDING:
        (HISTORIES / f"{name}.json").write_text(history.to_json())


async def test_lifecycle_run_replays(
    time_skipping_env: WorkflowEnvironment,
    ts_worker: Worker,
    ts_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    """Pause by signal and update, a failure pause, resume, retry, a timeout, advance, done."""
    client = time_skipping_env.client
    spec = await start(
        client, db, ts_settings, ["a", "b", "c"], batch_size=2, job_timeout_seconds=300
    )
    await client.get_workflow_handle(f"rollout-{spec.id}").signal("pause")
    await settles_to(client, spec, "paused")
    await act(client, spec, "resume")
    a, b = (await view(client, spec)).jobs
    await report(client, spec, a, "in_progress", "preflight")
    await report(client, spec, a, "rolled_back", "smoke")
    await settles_to(client, spec, "paused")
    await act(client, spec, "retry")
    retried = next(j for j in (await view(client, spec)).jobs if j.attempt == 2)
    await report(client, spec, retried, "succeeded")
    await report(client, spec, b, "in_progress", "pull")
    await skip_time(time_skipping_env, 301)  # b times out; failures were accepted by the retry
    await settles_to(client, spec, "paused")
    await act(client, spec, "resume")
    await settles_to(client, spec, "awaiting_advance")
    await act(client, spec, "advance")
    (c,) = (await view(client, spec)).jobs
    await act(client, spec, "pause", "change freeze")
    await report(client, spec, c, "succeeded")
    await act(client, spec, "resume")
    assert (await outcome(client, spec)).status == "completed"
    await keep(client, spec, "lifecycle")


async def test_abort_run_replays(
    time_skipping_env: WorkflowEnvironment,
    ts_worker: Worker,
    ts_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    client = time_skipping_env.client
    spec = await start(client, db, ts_settings, ["a", "b", "c"], batch_size=3, auto_advance=True)
    a, _, _ = (await view(client, spec)).jobs
    await report(client, spec, a, "in_progress", "pull")
    await act(client, spec, "abort", "bad build")
    await report(client, spec, a, "failed", "migrate")
    assert (await outcome(client, spec)).counts == {"failed": 1, "cancelled": 2}
    await keep(client, spec, "abort")


# --- issue 8: the paths that keep a rollout from being wedged ----------------------------------


async def test_poison_text_run_replays(
    time_skipping_env: WorkflowEnvironment,
    ts_worker: Worker,
    ts_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    """A NUL in a report's message and in a pause reason, signalled past the API."""
    client = time_skipping_env.client
    spec = await start(client, db, ts_settings, ["a", "b"], batch_size=2, max_failures=5)
    a, _ = (await view(client, spec)).jobs
    poison = JobReportSignal(
        job_id=a.id, instance_id="a", status="failed", step="migrate", message="boom\x00"
    )
    await rollout_client.report_job(client, spec.id, poison, timeout=15)
    handle = client.get_workflow_handle(f"rollout-{spec.id}")
    await handle.signal("pause", PauseInput(actor="ops", reason="hold\x00"))
    await settles_to(client, spec, "paused")
    await act(client, spec, "abort", "give up")
    assert (await outcome(client, spec)).counts == {"failed": 1, "cancelled": 1}
    await keep(client, spec, "poison_text")


async def test_abort_before_batch_1_run_replays(
    time_skipping_env: WorkflowEnvironment,
    ts_worker: Worker,
    ts_settings: ApiSettings,
    worker_pool: asyncpg.Pool,
    db: asyncpg.Connection,
) -> None:
    """Aborted while its targets load (the instances table is locked meanwhile)."""
    client = time_skipping_env.client
    await seed_instances(db, ["a", "b"])
    async with worker_pool.acquire() as locker, locker.transaction():
        await locker.execute("LOCK TABLE instances IN ACCESS EXCLUSIVE MODE")
        starting = asyncio.create_task(start(client, db, ts_settings, []))
        workflow_id = await eventually(lambda: loading_targets(client, worker_pool))
        spec_id = workflow_id.removeprefix("rollout-")
        await rollout_client.run_action(
            client, spec_id, "abort", AbortInput(actor="tester", reason="wrong"), timeout=15
        )
        spec = await starting
    result = await outcome(client, spec)
    assert (result.status, result.counts) == ("aborted", {})
    live = await view(client, spec)
    assert (live.target_count, live.current_batch) == (2, 0)  # loaded, and not released
    await keep(client, spec, "abort_before_batch_1")


async def test_targets_too_large_run_replays(
    time_skipping_env: WorkflowEnvironment,
    ts_worker: Worker,
    ts_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    client = time_skipping_env.client
    await db.execute(
        "INSERT INTO instances (instance_id, channel, current_version)"
        " SELECT 'host-' || lpad(i::text, 34, '0'), 'stable', '1.3.0'"
        " FROM generate_series(1, 100000) AS i"
    )
    spec = await start(client, db, ts_settings, [])
    live = await view(client, spec)
    assert live.status == "aborted" and live.note is not None
    assert live.note.startswith("could not start: 100000 target instances")
    assert (await outcome(client, spec)).status == "aborted"
    await keep(client, spec, "targets_too_large")


async def test_cancel_request_run_replays(
    dev_env: WorkflowEnvironment,
    dev_worker: Worker,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    """On the dev server: under load the time-skipping server intermittently failed the
    activity cancellation a cancel request causes ("ACTIVITY_UNKNOWN")."""
    client = dev_env.client
    spec = await start(client, db, dev_settings, ["a", "b", "c"], batch_size=2)
    a, _ = (await view(client, spec)).jobs
    await report(client, spec, a, "in_progress", "pull")
    handle = client.get_workflow_handle(f"rollout-{spec.id}")
    await handle.cancel()
    with pytest.raises(WorkflowFailureError) as closed:
        await handle.result()
    assert is_cancelled_exception(closed.value.cause)
    await keep(client, spec, "cancel_request")


async def loading_targets(client: Client, pool: asyncpg.Pool) -> str | None:
    """The workflow id of the test's rollout once it waits for its targets."""
    workflow_id = await pool.fetchval("SELECT workflow_id FROM rollouts")
    if workflow_id is None:
        return None
    described = await client.get_workflow_handle(workflow_id).describe()
    pending = [p.activity_type.name for p in described.raw_description.pending_activities]
    return workflow_id if pending == ["load_targets"] else None
