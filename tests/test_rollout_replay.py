"""Replay: histories recorded from real runs must replay on the current RolloutWorkflow, so a
change that would break running rollouts (non-determinism) fails CI.

Re-record after an intended, compatible change (or to add scenarios):
    ROLLOUT_RECORD_HISTORIES=1 .venv/bin/pytest tests/test_rollout_replay.py
which runs the scenarios below on the time-skipping server and writes tests/histories/*.json.
Keep the old files too when the change must stay compatible with rollouts already running.
"""

import os
from pathlib import Path

import asyncpg
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from contract.settings import ApiSettings
from store.rollouts import RolloutSpec
from tests.fixtures_temporal import skip_time
from tests.test_rollout_workflow import act, outcome, report, settles_to, start, view
from workflows.rollout import RolloutWorkflow

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
