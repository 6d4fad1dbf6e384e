"""Free text with NUL or a lone surrogate is stored with U+FFFD, never a reason to lose an outcome.

Real HTTP, a real Temporal dev server and worker, real PostgreSQL: the report is answered 200,
the workflow and the stored view agree, and nothing is left failing in the read model.
"""

import json
import secrets

import asyncpg
import httpx
import pytest
from temporalio.worker import Worker

from server.settings import ApiSettings
from tests.agent_requests import assert_signed_by, body_for, post_signed
from tests.fixtures_temporal import eventually, seed_instances, seed_release

AGENT_TOKEN = secrets.token_hex(16)


@pytest.fixture
def settings(database_url: str) -> ApiSettings:
    """The shared settings plus a fleet token, so the seeded instances can report."""
    return ApiSettings(
        database_url=database_url,
        control_plane_admin_token=secrets.token_hex(16),
        control_plane_release_signing_secret=secrets.token_hex(16),
        control_plane_agent_token=AGENT_TOKEN,
    )


async def test_nul_in_a_reason_and_a_report_message_is_stored_replaced(
    dev_worker: Worker,
    dev_admin: httpx.AsyncClient,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    release_id = await seed_release(db, dev_settings)
    await seed_instances(db, ["web-1", "web-2"])
    body = {"manifestId": release_id, "channel": "stable", "batchSize": 2, "maxFailures": 1}
    created = await dev_admin.post("/api/rollouts", json=body)
    assert created.status_code == 201, created.text
    rollout = created.json()

    reason = json.dumps({"reason": "disk\u0000 full \ud800"})  # escaped: \\ud800 on the wire
    paused = await dev_admin.post(
        f"/api/rollouts/{rollout['id']}/pause",
        content=reason,
        headers={"content-type": "application/json"},
    )
    assert paused.status_code == 200, paused.text
    assert paused.json()["pausedReason"] == "disk\ufffd full \ufffd"

    async def stored_reason() -> str | None:
        return await db.fetchval("SELECT paused_reason FROM rollouts WHERE id = $1", rollout["id"])

    assert await eventually(stored_reason) == "disk\ufffd full \ufffd"
    assert (await dev_admin.post(f"/api/rollouts/{rollout['id']}/resume")).status_code == 200

    job = rollout["batches"][0]["jobs"][0]
    report = body_for(
        job["instanceId"],
        jobId=job["id"],
        status="failed",
        step="smoke",
        message="smoke said \u0000\u0000 then \udc80",
    )
    answer = await post_signed(dev_admin, "/api/updates/report", report, AGENT_TOKEN)
    assert answer.status_code == 200, answer.text
    assert assert_signed_by(answer, AGENT_TOKEN, report["nonce"])["status"] == "failed"
    replaced = "smoke said \ufffd\ufffd then \ufffd"
    assert await db.fetchval("SELECT message FROM job_reports") == replaced

    async def settled_in_read_model() -> asyncpg.Record | None:
        row = await db.fetchrow(
            "SELECT status, message FROM update_jobs WHERE id = $1 AND status = 'failed'",
            job["id"],
        )
        return row

    row = await eventually(settled_in_read_model)
    assert row["message"] == replaced
    view = (await dev_admin.get(f"/api/rollouts/{rollout['id']}")).json()
    [failed] = [j for j in view["batches"][0]["jobs"] if j["id"] == job["id"]]
    assert (failed["status"], failed["message"]) == ("failed", replaced)
    assert view["stale"] is False
