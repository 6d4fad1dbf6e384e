"""Text PostgreSQL cannot store (NUL) that reached a workflow without the API (a signal from the
Temporal CLI) never wedges a rollout: a rollout whose write keeps failing on it goes on as soon
as a worker that makes text storable takes the write. Dev server, real workers, real
PostgreSQL."""

import logging

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from temporalio import activity
from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.testing import WorkflowEnvironment

from activities.rollouts import STORABLE_NOTE, RolloutActivities
from devstack.ports import free_port
from server.settings import ApiSettings
from store import audit, jobs, rollouts
from store.rollouts import Rollout
from temporal_client import rollouts as rollout_client
from tests.fixtures_temporal import eventually, seed_instances, seed_release
from tests.test_rollout_api import create
from worker.main import build_worker
from workflows.rollout_models import (
    JobReportSignal,
    PauseInput,
    RecordProgressInput,
    RecordProgressResult,
)

TIMEOUT = 10.0
METRIC = "rollout_unstorable_text_writes"


class WedgingActivities(RolloutActivities):
    """A read-model write that stores text as given: it fails on NUL, and the same data is
    retried for ever, the wedge the real activities must get a rollout out of."""

    @activity.defn(name="record_progress")
    async def record_progress(self, input: RecordProgressInput) -> RecordProgressResult:
        return await self._record(input, None)


async def write_attempts(env: WorkflowEnvironment, workflow_id: str) -> int:
    described = await env.client.get_workflow_handle(workflow_id).describe()
    pending = described.raw_description.pending_activities
    return max((p.attempt for p in pending), default=0)


async def test_a_wedged_rollout_recovers_once_the_fixed_worker_runs(
    dev_env: WorkflowEnvironment,
    dev_admin: httpx.AsyncClient,
    dev_settings: ApiSettings,
    worker_pool: asyncpg.Pool,
    db: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    release_id = await seed_release(db, dev_settings)
    await seed_instances(db, ["a", "b"])
    old = build_worker(dev_env.client, dev_settings, WedgingActivities(worker_pool))
    async with old:
        created = await create(dev_admin, release_id, maxFailures=5)
        assert created.status_code == 201, created.text
        rollout_id = created.json()["id"]
        workflow_id = f"rollout-{rollout_id}"
        live = await rollout_client.live_view(dev_env.client, rollout_id, timeout=TIMEOUT)
        a = next(job for job in live.jobs if job.instance_id == "a")
        # Straight to the workflow, as `temporal workflow signal` would: no API checks.
        poison = JobReportSignal(
            job_id=a.id, instance_id="a", status="failed", step="migrate", message="boom\x00 out"
        )
        await rollout_client.report_job(dev_env.client, rollout_id, poison, timeout=TIMEOUT)
        await dev_env.client.get_workflow_handle(workflow_id).signal(
            "pause", PauseInput(actor="ops", reason="hold\x00 on")
        )
        # Wedged: the write fails and is retried with the same data.

        async def wedged() -> bool:
            return await write_attempts(dev_env, workflow_id) > 1

        await eventually(wedged)
        assert (await rollouts.get(db, rollout_id)).status == "running"  # type: ignore[union-attr]

    caplog.set_level(logging.ERROR, logger=activity.logger.base_logger.name)
    # The fixed worker, exporting metrics as WORKER_METRICS_ADDRESS makes `rollout worker` do.
    metrics = f"127.0.0.1:{free_port()}"
    runtime = Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=metrics)))
    client = await Client.connect(
        dev_env.client.service_client.config.target_host,
        namespace=dev_env.client.namespace,
        data_converter=dev_env.client.data_converter,
        runtime=runtime,
    )
    fixed = build_worker(client, dev_settings, RolloutActivities(worker_pool))
    async with fixed:

        async def stored_paused() -> Rollout | None:
            row = await rollouts.get(db, rollout_id)
            return row if row and row.status == "paused" else None

        # The next retry of the write comes after Temporal's backoff (up to 30 s).
        row = await eventually(stored_paused, timeout=120)
        live = await rollout_client.live_view(dev_env.client, rollout_id, timeout=TIMEOUT)
        assert live.status == "paused" and live.paused_reason == "hold\x00 on"
        assert row.paused_reason == "hold\ufffd on"
        assert STORABLE_NOTE in row.details
        stored = {job.instance_id: job for job in await jobs.for_rollout(db, rollout_id)}
        assert {name: job.status for name, job in stored.items()} == {
            j.instance_id: j.status for j in live.jobs
        }
        assert (stored["a"].status, stored["a"].message) == ("failed", "boom\ufffd out")

        aborted = await dev_admin.post(f"/api/rollouts/{rollout_id}/abort", json={"reason": "x"})
        assert aborted.status_code == 200, aborted.text
        assert aborted.json()["status"] == "aborted"

        async def closed() -> Rollout | None:
            row = await rollouts.get(db, rollout_id)
            return row if row and row.workflow_closed else None

        final = await eventually(closed)
        assert final.status == "aborted"
        assert {j.instance_id: j.status for j in await jobs.for_rollout(db, rollout_id)} == {
            "a": "failed",
            "b": "cancelled",
        }
        again = await create(dev_admin, release_id)
        assert again.status_code == 201, again.text

    actions = [e.action for e in await audit.for_subject(db, f"rollout:{rollout_id}")]
    assert "rollout.text_made_storable" in actions
    activity_logger = activity.logger.base_logger.name
    errors = [
        r
        for r in caplog.records
        if r.name == activity_logger and getattr(r, "rollout_id", None) == rollout_id
    ]
    assert errors, "no ERROR line said the text was changed"
    # One ERROR line and one count per repaired write (a retried attempt may repeat one).
    assert await counted(metrics, METRIC) == len(errors)
    assert all(f"rollout-{rollout_id}" in r.getMessage() for r in errors)  # the SDK adds it
    assert all(rollout_id in r.getMessage() and "\x00" not in r.getMessage() for r in errors)


async def counted(address: str, name: str) -> float:
    """The counter's value on a worker's Prometheus endpoint (0 before its first count)."""
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"http://{address}/metrics")).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in (name, f"{name}_total")
    )
