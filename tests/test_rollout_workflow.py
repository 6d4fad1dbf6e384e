"""RolloutWorkflow on the time-skipping server, with a real worker and real PostgreSQL."""

import logging
import uuid

import asyncpg
import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from domain.rollouts import RolloutSpec
from server.settings import ApiSettings
from store import audit, jobs, rollout_targets, rollouts
from temporal_client import rollouts as rollout_client
from tests.fixtures_temporal import eventually, seed_instances, seed_release, skip_time
from workflows.rollout import RolloutWorkflow
from workflows.rollout_models import JobReportSignal, JobState, RolloutResult, RolloutView

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


async def outcome(client: Client, spec: RolloutSpec) -> RolloutResult:
    """The workflow's result (awaiting it lets the time-skipping server skip ahead)."""
    return await client.get_workflow_handle_for(RolloutWorkflow.run, f"rollout-{spec.id}").result()


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
    assert await rollout_targets.count(db, spec.id) == 0  # dropped by the finishing write
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


async def job_for(client: Client, spec: RolloutSpec, instance_id: str) -> str | None:
    handed = await rollout_client.job_for_instance(client, spec.id, instance_id, timeout=TIMEOUT)
    return handed.id if handed else None


async def test_failures_beyond_max_pause_with_a_reason_and_resume_accepts_them(
    time_skipping_env: WorkflowEnvironment,
    ts_worker: Worker,
    ts_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    client = time_skipping_env.client
    fleet = ["web-1", "web-2", "web-3", "web-4", "web-5", "web-6"]
    spec = await start(client, db, ts_settings, fleet, batch_size=3, max_failures=1)
    one, two, three = (await view(client, spec)).jobs
    await report(client, spec, one, "rolled_back", "smoke")
    await report(client, spec, three, "in_progress", "pull")
    # One failure is tolerated: still running, jobs still handed out.
    assert await job_for(client, spec, "web-2") == two.id
    await report(client, spec, two, "failed", "preflight")
    paused = await settles_to(client, spec, "paused")
    assert paused.paused_reason == (
        "2 jobs failed (max 1): web-1 rolled_back at smoke; web-2 failed at preflight"
    )
    assert "paused: 2 jobs failed" in paused.details
    assert await job_for(client, spec, "web-3") is None  # withheld while paused
    # A job already running still settles while paused.
    await report(client, spec, three, "succeeded")

    async def stored_reason() -> str | None:
        row = await rollouts.get(db, spec.id)
        return row.paused_reason if row and row.status == "paused" else None

    assert (await eventually(stored_reason)).startswith("2 jobs failed")
    assert await act(client, spec, "resume") == "running"
    # The failures are accepted: the settled batch waits for an advance, it does not pause again.
    await settles_to(client, spec, "awaiting_advance")
    await act(client, spec, "advance")
    four, five, _ = (await view(client, spec)).jobs
    await report(client, spec, four, "succeeded")
    await report(client, spec, five, "failed", "migrate")
    again = await settles_to(client, spec, "paused")
    assert again.paused_reason is not None
    assert again.paused_reason.startswith("3 jobs failed (max 1, 2 accepted): web-5 failed")


async def test_retry_releases_new_jobs_for_exactly_the_failed_ones(
    time_skipping_env: WorkflowEnvironment,
    ts_worker: Worker,
    ts_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    client = time_skipping_env.client
    spec = await start(client, db, ts_settings, ["a", "b", "c", "d"], batch_size=4, max_failures=3)
    a, b, c, d = (await view(client, spec)).jobs
    with pytest.raises(
        rollout_client.ActionRefused, match="no failed, rolled-back, timed-out or unreachable"
    ):
        await act(client, spec, "retry")
    await report(client, spec, a, "failed", "pull")
    await report(client, spec, b, "rolled_back", "smoke")
    await report(client, spec, c, "succeeded")
    await report(client, spec, d, "in_progress", "backup")

    async def two_failed() -> bool:
        jobs_now = (await view(client, spec)).jobs
        return sum(j.status in ("failed", "rolled_back") for j in jobs_now) == 2

    await eventually(two_failed)
    assert await act(client, spec, "retry") == "running"
    after = (await view(client, spec)).jobs
    retried = [j for j in after if j.attempt == 2]
    assert sorted(j.instance_id for j in retried) == ["a", "b"]
    assert all(j.status == "pending" and j.id not in (a.id, b.id) for j in retried)
    assert await job_for(client, spec, "a") == retried[0].id
    # A report on the old job id changes nothing: it is settled and superseded.
    await report(client, spec, a, "succeeded")
    stored = {j.id: j for j in await jobs.for_rollout(db, spec.id)}
    assert {j.id for j in retried} <= set(stored)
    assert stored[d.id].attempt == 1  # the running job was not re-released
    for job in retried:
        await report(client, spec, job, "succeeded")
    await report(client, spec, d, "succeeded")
    done = await settles_to(client, spec, "completed")
    assert done.details.startswith("batch 1/1 · 4 succeeded")
    assert stored[a.id].status == "failed"


async def test_jobs_time_out_by_durable_timer_but_not_while_withheld(
    time_skipping_env: WorkflowEnvironment,
    ts_worker: Worker,
    ts_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    client = time_skipping_env.client
    spec = await start(
        client,
        db,
        ts_settings,
        ["a", "b"],
        job_timeout_seconds=600,
        max_failures=5,
        max_unreachable=5,
    )
    a, b = (await view(client, spec)).jobs
    await report(client, spec, a, "in_progress", "migrate")
    await act(client, spec, "pause", "hold")
    await skip_time(time_skipping_env, 601)
    paused = await view(client, spec)
    # The running job timed out; the withheld pending one did not (nor did it end unreachable).
    assert {j.instance_id: j.status for j in paused.jobs} == {"a": "timed_out", "b": "pending"}
    await act(client, spec, "resume")
    resumed_b = next(j for j in (await view(client, spec)).jobs if j.instance_id == "b")
    assert resumed_b.deadline > b.deadline  # its time started again at resume
    await skip_time(time_skipping_env, 601)
    done = await settles_to(client, spec, "completed")
    assert {j.instance_id: (j.status, j.step) for j in done.jobs} == {
        "a": ("timed_out", "migrate"),
        "b": ("unreachable", None),  # its host never started it
    }

    async def stored_ends() -> bool:
        stored = [j.status for j in await jobs.for_rollout(db, spec.id)]
        return stored == ["timed_out", "unreachable"]

    await eventually(stored_ends)


async def test_hosts_that_never_start_are_unreachable_under_their_own_limit(
    time_skipping_env: WorkflowEnvironment,
    ts_worker: Worker,
    ts_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    """Not application failures: maxFailures 0 is not exceeded, maxUnreachable 1 is."""
    client = time_skipping_env.client
    spec = await start(
        client,
        db,
        ts_settings,
        ["a", "b", "c"],
        batch_size=3,
        job_timeout_seconds=300,
        max_unreachable=1,
    )
    *_, c = (await view(client, spec)).jobs
    await report(client, spec, c, "in_progress", "preflight")
    await report(client, spec, c, "succeeded")
    await skip_time(time_skipping_env, 301)
    paused = await settles_to(client, spec, "paused")
    assert paused.paused_reason == "2 hosts unreachable (max 1): a, b"
    assert {j.instance_id: j.status for j in paused.jobs} == {
        "a": "unreachable",
        "b": "unreachable",
        "c": "succeeded",
    }

    async def stored() -> rollouts.Rollout | None:
        row = await rollouts.get(db, spec.id)
        return row if row and row.status == "paused" else None

    row = await eventually(stored)
    assert row.paused_reason == "2 hosts unreachable (max 1): a, b"
    events = await audit.for_subject(db, f"rollout:{spec.id}")
    (unreachable,) = [e for e in events if e.action == "rollout.jobs_unreachable"]
    assert unreachable.detail == {"count": 2, "instances": ["a", "b"]}
    assert "rollout.jobs_timed_out" not in [e.action for e in events]
    # A retry runs them again, as it does timed-out jobs, and ends the pause.
    assert await act(client, spec, "retry") == "running"
    retried = sorted((j.instance_id, j.attempt, j.status) for j in (await view(client, spec)).jobs)
    assert retried == [
        ("a", 1, "unreachable"),
        ("a", 2, "pending"),
        ("b", 1, "unreachable"),
        ("b", 2, "pending"),
        ("c", 1, "succeeded"),
    ]


async def test_auto_advance_waits_the_bake_time(
    time_skipping_env: WorkflowEnvironment,
    ts_worker: Worker,
    ts_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    client = time_skipping_env.client
    spec = await start(
        client, db, ts_settings, ["a", "b", "c"], batch_size=2, auto_advance=True, bake_seconds=900
    )
    await succeed_all(client, spec)
    baking = await settles_to(client, spec, "awaiting_advance")
    assert baking.current_batch == 1
    await skip_time(time_skipping_env, 300)
    assert (await view(client, spec)).current_batch == 1  # still baking
    await skip_time(time_skipping_env, 601)

    async def released() -> bool:  # "running" shows while batch 2 is read, before it is out
        current = await view(client, spec)
        return (current.status, current.current_batch) == ("running", 2)

    await eventually(released)
    await succeed_all(client, spec)
    await settles_to(client, spec, "completed")


async def test_abort_cancels_pending_jobs_while_running_ones_still_report(
    time_skipping_env: WorkflowEnvironment,
    ts_worker: Worker,
    ts_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    client = time_skipping_env.client
    spec = await start(client, db, ts_settings, ["a", "b", "c"], batch_size=3)
    a, b, _ = (await view(client, spec)).jobs
    await report(client, spec, a, "in_progress", "pull")
    assert await act(client, spec, "abort", "bad release") == "aborted"
    aborted = await view(client, spec)
    assert {j.instance_id: j.status for j in aborted.jobs} == {
        "a": "in_progress",
        "b": "cancelled",
        "c": "cancelled",
    }
    assert await job_for(client, spec, "a") is None  # nothing is handed out any more
    for action in ("advance", "pause", "resume", "retry", "abort"):
        with pytest.raises(rollout_client.ActionRefused, match="rollout is aborted"):
            await act(client, spec, action)
    await report(client, spec, b, "in_progress", "pull")  # cancelled: ignored
    await report(client, spec, a, "succeeded")
    result = await client.get_workflow_handle_for(
        RolloutWorkflow.run, f"rollout-{spec.id}"
    ).result()
    assert (result.status, result.counts) == ("aborted", {"succeeded": 1, "cancelled": 2})
    row = await rollouts.get(db, spec.id)
    assert row is not None and row.workflow_closed and row.status == "aborted"
    assert {j.instance_id: j.status for j in await jobs.for_rollout(db, spec.id)} == {
        "a": "succeeded",
        "b": "cancelled",
        "c": "cancelled",
    }


async def test_reports_are_idempotent_and_checked_against_the_instance(
    time_skipping_env: WorkflowEnvironment,
    ts_worker: Worker,
    ts_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    client = time_skipping_env.client
    spec = await start(client, db, ts_settings, ["a", "b"], batch_size=2, max_failures=5)
    a, b = (await view(client, spec)).jobs
    await report(client, spec, a.model_copy(update={"instance_id": "b"}), "failed")  # wrong host
    await report(client, spec, a.model_copy(update={"id": "no-such-job"}), "failed")  # unknown
    await report(client, spec, a, "in_progress", "preflight")
    await report(client, spec, a, "succeeded")
    await report(client, spec, a, "failed", "smoke")  # contradicts a settled job: ignored
    await report(client, spec, a, "in_progress", "pull")  # ignored too
    await report(client, spec, b, "in_progress", "backup")
    current = await view(client, spec)
    assert {j.instance_id: (j.status, j.step) for j in current.jobs} == {
        "a": ("succeeded", "health"),
        "b": ("in_progress", "backup"),
    }
    assert await job_for(client, spec, "a") is None
    assert await job_for(client, spec, "b") == b.id


async def test_no_targets_completes_at_once(
    time_skipping_env: WorkflowEnvironment,
    ts_worker: Worker,
    ts_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    client = time_skipping_env.client
    spec = await start(client, db, ts_settings, [])
    result = await client.get_workflow_handle_for(
        RolloutWorkflow.run, f"rollout-{spec.id}"
    ).result()
    assert (result.status, result.counts) == ("completed", {})
    row = await rollouts.get(db, spec.id)
    assert row is not None and row.status == "completed" and row.total_batches == 0
    assert "nothing to update" in row.details


async def test_status_changes_are_logged_with_the_rollout_id(
    time_skipping_env: WorkflowEnvironment,
    ts_worker: Worker,
    ts_settings: ApiSettings,
    db: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 13: the workflow's log lines name their rollout (a JSON field with LOG_FORMAT=json)."""
    caplog.set_level(logging.INFO, logger="temporalio.workflow")
    client = time_skipping_env.client
    spec = await start(client, db, ts_settings, ["a"], batch_size=1)
    await act(client, spec, "pause", "change freeze")
    lines = [
        (record.getMessage(), record.status)  # type: ignore[attr-defined]
        for record in caplog.records
        if getattr(record, "rollout_id", None) == spec.id
    ]
    assert any(
        message.startswith(f"rollout {spec.id}: running -> paused (change freeze)")
        and status == "paused"
        for message, status in lines
    ), lines
