"""Hosts that join a channel while a rollout runs, on real PostgreSQL and a real Temporal server:
with `includeLateJoiners` they are added after the targets and updated by a later batch; without
it the targets stay those fixed at start (PROTOCOL §4)."""

import functools

import asyncpg
import httpx
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from server.settings import ApiSettings
from tests.fixtures_temporal import eventually, seed_instances, seed_release
from tests.test_rollout_api import create, finish_batch, status_becomes


async def _settled(admin: httpx.AsyncClient, rollout_id: str) -> dict | None:
    view = (await admin.get(f"/api/rollouts/{rollout_id}")).json()
    return view if view["status"] in ("awaiting_advance", "completed") else None


async def _run_to_the_end(
    env: WorkflowEnvironment, admin: httpx.AsyncClient, rollout: dict
) -> list[list[str]]:
    """Each batch's hosts, advancing batch by batch until the rollout completes."""
    batches = []
    while True:
        rollout = await status_becomes(admin, rollout["id"], "running")
        batch = rollout["batches"][rollout["currentBatch"] - 1]
        batches.append(sorted(job["instanceId"] for job in batch["jobs"]))
        await finish_batch(env, rollout)
        settled = await eventually(functools.partial(_settled, admin, rollout["id"]))
        if settled["status"] == "completed":
            return batches
        advanced = await admin.post(f"/api/rollouts/{rollout['id']}/advance")
        assert advanced.status_code == 200, advanced.text


async def test_a_late_joiner_is_updated_by_a_later_batch(
    dev_env: WorkflowEnvironment,
    dev_worker: Worker,
    dev_admin: httpx.AsyncClient,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    release_id = await seed_release(db, dev_settings)
    await seed_instances(db, ["a", "b"])
    created = await create(dev_admin, release_id, batchSize=1, includeLateJoiners=True)
    assert created.status_code == 201, created.text
    rollout = created.json()
    await status_becomes(dev_admin, rollout["id"], "running")
    await seed_instances(db, ["late-1"])  # joins while batch 1 runs
    await seed_instances(db, ["current"], version="1.4.0")  # already there: never a target

    batches = await _run_to_the_end(dev_env, dev_admin, rollout)
    assert batches == [["a"], ["b"], ["late-1"]]
    done = (await dev_admin.get(f"/api/rollouts/{rollout['id']}")).json()
    assert (done["targetCount"], done["totalBatches"]) == (3, 3)
    assert "1 joined late" in done["details"]
    joined = await db.fetchrow(
        "SELECT detail FROM audit_log WHERE action = 'rollout.late_joiners' AND subject = $1",
        f"rollout:{rollout['id']}",
    )
    assert joined["detail"] == {"added": 1, "targets": 3}


async def test_without_the_option_the_targets_are_those_fixed_at_start(
    dev_env: WorkflowEnvironment,
    dev_worker: Worker,
    dev_admin: httpx.AsyncClient,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    release_id = await seed_release(db, dev_settings)
    await seed_instances(db, ["a", "b"])
    rollout = (await create(dev_admin, release_id, batchSize=1)).json()
    await status_becomes(dev_admin, rollout["id"], "running")
    await seed_instances(db, ["late-1"])
    assert await _run_to_the_end(dev_env, dev_admin, rollout) == [["a"], ["b"]]


async def test_late_joiners_refuse_a_plan_cut_by_percentages(
    dev_worker: Worker,
    dev_admin: httpx.AsyncClient,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    release_id = await seed_release(db, dev_settings)
    body = {
        "manifestId": release_id,
        "channel": "stable",
        "batchPlan": [1, "50%", "100%"],
        "includeLateJoiners": True,
    }
    refused = await dev_admin.post("/api/rollouts", json=body)
    assert refused.status_code == 422
    assert "a plan with percentages would move batches already released" in refused.json()["detail"]
