"""A settled job's outcome is fixed by its final report, and a job stores a bounded number of
reports (docs/protocol.md §5 and §7).

The real API over HTTP with signed agent reports, on the time-skipping server with a real
worker and PostgreSQL (fixtures of tests/test_job_steps.py)."""

import asyncpg
import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from contract.wire import MAX_PROGRESS_REPORTS_PER_JOB
from server.settings import ApiSettings
from tests.agent_requests import body_for, post_signed
from tests.test_job_steps import AGENT_TOKEN, admin, agent_reports, started_job

__all__ = ["admin"]  # the fixture, used by name


async def stored(db: asyncpg.Connection, job_id: str) -> tuple[str, str, int]:
    row = await db.fetchrow("SELECT status, step FROM update_jobs WHERE id = $1", job_id)
    count = await db.fetchval("SELECT count(*) FROM job_reports WHERE job_id = $1", job_id)
    return row["status"], row["step"], count


@pytest.fixture
async def job_id(
    admin: httpx.AsyncClient,
    time_skipping_env: WorkflowEnvironment,
    ts_settings: ApiSettings,
    db: asyncpg.Connection,
) -> str:
    """A one-host rollout's job, released, its host not started yet."""
    return (await started_job(admin, db, ts_settings))[1]


async def test_a_settled_job_keeps_its_outcome_and_step(
    admin: httpx.AsyncClient, db: asyncpg.Connection, job_id: str
) -> None:
    for step in ("preflight", "smoke"):
        assert (await agent_reports(admin, job_id, "in_progress", step)).status_code == 200
    final = await agent_reports(admin, job_id, "failed", "smoke")
    assert final.status_code == 200, final.text
    assert await stored(db, job_id) == ("failed", "smoke", 3)

    # The same final report again: idempotent, nothing stored.
    again = await agent_reports(admin, job_id, "failed", "smoke")
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "failed"
    # The same status at another step, another final status, a start: refused, nothing stored.
    for status, step in (("failed", "rollback"), ("failed", "health"), ("rolled_back", "smoke")):
        refused = await agent_reports(admin, job_id, status, step)
        assert refused.status_code == 409, refused.text
        assert f"job {job_id} is already failed at smoke" in refused.json()["detail"]
    late_start = await agent_reports(admin, job_id, "in_progress", "rollback")
    assert late_start.status_code == 409, late_start.text
    assert await stored(db, job_id) == ("failed", "smoke", 3)
    listed = (await admin.get(f"/api/updates/jobs/{job_id}")).json()
    assert (listed["status"], listed["step"]) == ("failed", "smoke")


async def test_a_job_stores_a_bounded_number_of_reports_and_still_takes_its_final_one(
    admin: httpx.AsyncClient, db: asyncpg.Connection, job_id: str
) -> None:
    # A step's start again is a duplicate (not stored); alternating steps are new reports.
    steps = ("backup", "pull")
    for n in range(MAX_PROGRESS_REPORTS_PER_JOB):
        answer = await agent_reports(admin, job_id, "in_progress", steps[n % 2])
        assert answer.status_code == 200, answer.text
    assert await stored(db, job_id) == ("in_progress", "pull", MAX_PROGRESS_REPORTS_PER_JOB)

    over = await agent_reports(admin, job_id, "in_progress", "migrate")
    assert over.status_code == 409, over.text
    detail = over.json()["detail"]
    assert f"({MAX_PROGRESS_REPORTS_PER_JOB})" in detail and "final report" in detail
    # The duplicate of the last start is still a duplicate, not a refusal.
    assert (await agent_reports(admin, job_id, "in_progress", "pull")).status_code == 200
    assert await stored(db, job_id) == ("in_progress", "pull", MAX_PROGRESS_REPORTS_PER_JOB)

    # The job's end is never lost to the bound.
    final = await agent_reports(admin, job_id, "succeeded", "health")
    assert final.status_code == 200, final.text
    assert await stored(db, job_id) == ("succeeded", "health", MAX_PROGRESS_REPORTS_PER_JOB + 1)
    timeline = (await admin.get(f"/api/updates/jobs/{job_id}")).json()["timeline"]
    assert len(timeline) == MAX_PROGRESS_REPORTS_PER_JOB + 1  # the last, health, was not started
    assert (timeline[-1]["step"], timeline[-1]["outcome"]) == ("health", "succeeded")


async def test_a_job_the_control_plane_ended_keeps_its_status_and_records_the_hosts_end(
    admin: httpx.AsyncClient, db: asyncpg.Connection, job_id: str
) -> None:
    """Cancelled before its host started it: every refusal says the job's status (what the
    agent stops on); the host's first final report is recorded as its outcome, once."""
    rollout_id = (await admin.get(f"/api/updates/jobs/{job_id}")).json()["rolloutId"]
    aborted = await admin.post(f"/api/rollouts/{rollout_id}/abort")
    assert aborted.status_code == 200, aborted.text
    assert await stored(db, job_id) == ("cancelled", None, 0)

    start = await agent_reports(admin, job_id, "in_progress", "preflight")
    assert start.status_code == 409, start.text
    assert start.json()["jobStatus"] == "cancelled" and "hostOutcome" not in start.json()
    assert await stored(db, job_id) == ("cancelled", None, 0)

    late = await agent_reports(admin, job_id, "rolled_back", "backup")
    assert late.status_code == 409, late.text  # the report still contradicts the decision
    assert {k: late.json()[k] for k in ("jobStatus", "hostOutcome", "hostStep")} == {
        "jobStatus": "cancelled",
        "hostOutcome": "rolled_back",
        "hostStep": "backup",
    }
    assert "is recorded as the host's outcome" in late.json()["detail"]
    # The decision is never rewritten; the report is kept for the job's timeline.
    assert await stored(db, job_id) == ("cancelled", None, 1)
    job = (await admin.get(f"/api/updates/jobs/{job_id}")).json()
    assert (job["status"], job["hostOutcome"], job["hostStep"]) == (
        "cancelled",
        "rolled_back",
        "backup",
    )

    # The same again, or another end: refused as before, nothing recorded over the first.
    for status, step in (("rolled_back", "backup"), ("succeeded", "health")):
        again = await agent_reports(admin, job_id, status, step)
        assert again.status_code == 409, again.text
        assert "its host's outcome: rolled_back at backup" in again.json()["detail"]
        assert again.json()["hostOutcome"] == "rolled_back"
    assert await stored(db, job_id) == ("cancelled", None, 1)
    rollout = (await admin.get(f"/api/rollouts/{rollout_id}")).json()
    assert rollout["status"] == "aborted" and rollout["counts"] == {"cancelled": 1}
    assert rollout["batches"][0]["jobs"][0]["hostOutcome"] == "rolled_back"


async def test_a_started_jobs_step_from_another_instance_or_replayed_is_refused_unstored(
    admin: httpx.AsyncClient, db: asyncpg.Connection, job_id: str
) -> None:
    """A started job's next step is claimed and stored in one statement (store.jobs); what that
    statement does not take is refused as any report is, and stores nothing."""
    assert (await agent_reports(admin, job_id, "in_progress", "preflight")).status_code == 200
    step = body_for("web-1", jobId=job_id, status="in_progress", step="backup", message=None)
    assert (await post_signed(admin, "/api/updates/report", step, AGENT_TOKEN)).status_code == 200
    assert await stored(db, job_id) == ("in_progress", "backup", 2)

    replayed = await post_signed(admin, "/api/updates/report", step, AGENT_TOKEN)
    assert replayed.status_code == 401, replayed.text
    assert "nonce already used" in replayed.json()["detail"]
    foreign = body_for("web-2", jobId=job_id, status="in_progress", step="pull", message=None)
    refused = await post_signed(admin, "/api/updates/report", foreign, AGENT_TOKEN)
    assert refused.status_code == 403, refused.text
    assert await stored(db, job_id) == ("in_progress", "backup", 2)
