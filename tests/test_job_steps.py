"""A job's step is where its agent last said it was: every view, the pause reason and the
stored job agree, although the workflow hears only of a job starting and ending.

The real API over HTTP with signed agent reports, on the time-skipping server with a real
worker and PostgreSQL."""

import secrets
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from pydantic import SecretStr
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from api.app import create_app
from devstack.ports import free_port
from server.settings import ApiSettings
from temporal_client import rollouts as rollout_client
from tests.agent_requests import body_for, post_signed
from tests.conftest import LiveServer
from tests.fixtures_temporal import eventually, seed_instances, seed_release, skip_time
from workflows.rollout_models import JobReportSignal

AGENT_TOKEN = secrets.token_hex(16)
TIMEOUT = 300


@pytest.fixture
async def admin(
    ts_settings: ApiSettings, ts_worker: Worker, settings: ApiSettings
) -> AsyncIterator[httpx.AsyncClient]:
    configured = ts_settings.model_copy(
        update={"control_plane_agent_token": SecretStr(AGENT_TOKEN)}
    )
    token = settings.control_plane_admin_token.get_secret_value()
    async with (
        LiveServer(create_app(configured), free_port()) as server,
        httpx.AsyncClient(
            base_url=server.url, headers={"x-cp-admin-token": token}, timeout=30
        ) as client,
    ):
        yield client


async def started_job(
    admin: httpx.AsyncClient, db: asyncpg.Connection, settings: ApiSettings
) -> tuple[str, str]:
    """A one-host rollout that pauses at its first failure: (rollout id, job id)."""
    await seed_instances(db, ["web-1"])
    release_id = await seed_release(db, settings)
    created = await admin.post(
        "/api/rollouts",
        json={
            "manifestId": release_id,
            "channel": "stable",
            "batchSize": 1,
            "jobTimeoutSeconds": TIMEOUT,
        },
    )
    assert created.status_code == 201, created.text
    rollout = created.json()
    return rollout["id"], rollout["batches"][0]["jobs"][0]["id"]


async def agent_reports(
    admin: httpx.AsyncClient, job_id: str, status: str, step: str
) -> httpx.Response:
    body = body_for("web-1", jobId=job_id, status=status, step=step, message=None)
    return await post_signed(admin, "/api/updates/report", body, AGENT_TOKEN)


async def rollout_where(admin: httpx.AsyncClient, rollout_id: str, check: Any) -> dict:
    async def probe() -> dict | None:
        body = (await admin.get(f"/api/rollouts/{rollout_id}")).json()
        return body if check(body) else None

    return await eventually(probe)


def only_job(rollout: dict) -> dict:
    (job,) = rollout["batches"][0]["jobs"]
    return job


async def test_a_job_shows_its_reported_step_and_times_out_at_it(
    admin: httpx.AsyncClient,
    time_skipping_env: WorkflowEnvironment,
    ts_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    rollout_id, job_id = await started_job(admin, db, ts_settings)
    for step in ("preflight", "backup", "pull"):
        answer = await agent_reports(admin, job_id, "in_progress", step)
        assert answer.status_code == 200, answer.text

    # The live view of a running rollout, and the jobs listing, show the step the host is in.
    running = (await admin.get(f"/api/rollouts/{rollout_id}")).json()
    assert running["stale"] is False
    assert (only_job(running)["status"], only_job(running)["step"]) == ("in_progress", "pull")
    listed = (await admin.get("/api/updates/jobs", params={"rolloutId": rollout_id})).json()
    assert [(j["status"], j["step"]) for j in listed] == [("in_progress", "pull")]

    await skip_time(time_skipping_env, TIMEOUT + 1)
    paused = await rollout_where(admin, rollout_id, lambda r: r["status"] == "paused")
    assert (only_job(paused)["status"], only_job(paused)["step"]) == ("timed_out", "pull")
    assert "web-1 timed_out at pull" in paused["pausedReason"]
    stored = await db.fetchrow("SELECT status, step FROM update_jobs WHERE id = $1", job_id)
    assert (stored["status"], stored["step"]) == ("timed_out", "pull")
    # Its timeline: the steps before ended when the next began; pull never ended.
    timeline = (await admin.get(f"/api/updates/jobs/{job_id}")).json()["timeline"]
    assert [(s["step"], s["outcome"]) for s in timeline] == [
        ("preflight", "succeeded"),
        ("backup", "succeeded"),
        ("pull", "timed_out"),
    ]
    assert timeline[-1]["endedAt"] is None
    (failure,) = paused["failures"]
    assert (failure["jobId"], failure["status"], failure["step"]) == (job_id, "timed_out", "pull")
    assert failure["startedAt"] == timeline[-1]["startedAt"]


async def test_a_retried_report_the_workflow_already_took_sets_the_step(
    admin: httpx.AsyncClient,
    time_skipping_env: WorkflowEnvironment,
    ts_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    """The API signals a report before storing it: when the store then fails, the agent sends
    the same report again, and by then the workflow has written the job's end itself."""
    rollout_id, job_id = await started_job(admin, db, ts_settings)
    for step in ("preflight", "pull"):
        assert (await agent_reports(admin, job_id, "in_progress", step)).status_code == 200
    signal = JobReportSignal(job_id=job_id, instance_id="web-1", status="failed", step="smoke")
    await rollout_client.report_job(time_skipping_env.client, rollout_id, signal, timeout=15)

    async def written_by_the_workflow() -> asyncpg.Record | None:
        row = await db.fetchrow("SELECT status, step FROM update_jobs WHERE id = $1", job_id)
        return row if row["status"] == "failed" else None

    # The workflow's write keeps the step the acknowledged reports set.
    assert (await eventually(written_by_the_workflow))["step"] == "pull"
    again = await agent_reports(admin, job_id, "failed", "smoke")
    assert again.status_code == 200, again.text
    paused = await rollout_where(admin, rollout_id, lambda r: r["status"] == "paused")
    assert (only_job(paused)["status"], only_job(paused)["step"]) == ("failed", "smoke")
    assert "web-1 failed at smoke" in paused["pausedReason"]
    contradicting = await agent_reports(admin, job_id, "succeeded", "health")
    assert contradicting.status_code == 409, contradicting.text


async def test_a_job_never_started_ends_unreachable_and_refuses_a_late_report(
    admin: httpx.AsyncClient,
    time_skipping_env: WorkflowEnvironment,
    ts_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    """No report by its deadline and none in the read model: the host never started
    it. A report arriving after that is refused as one for a timed-out job is."""
    rollout_id, job_id = await started_job(admin, db, ts_settings)
    await skip_time(time_skipping_env, TIMEOUT + 1)
    paused = await rollout_where(admin, rollout_id, lambda r: r["status"] == "paused")
    assert (only_job(paused)["status"], only_job(paused)["step"]) == ("unreachable", None)
    assert paused["pausedReason"] == "1 host unreachable (max 0): web-1"
    (failure,) = paused["failures"]
    assert (failure["status"], failure["step"]) == ("unreachable", None)
    late = await agent_reports(admin, job_id, "in_progress", "preflight")
    assert late.status_code == 409, late.text
    assert f"job {job_id} is already unreachable" in late.json()["detail"]
    stored = await db.fetchrow("SELECT status, step FROM update_jobs WHERE id = $1", job_id)
    assert (stored["status"], stored["step"]) == ("unreachable", None)
