"""The rollouts API over real HTTP, a real dev server (Temporal CLI) and a real worker."""

import asyncio
from typing import Any

import asyncpg
import httpx
import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.rollouts import RolloutActivities
from server.settings import ApiSettings
from store import audit
from temporal_client import rollouts as rollout_client
from tests.fixtures_temporal import eventually, seed_instances, seed_release, venv_binary
from worker.main import build_worker
from workflows.rollout_models import JobReportSignal
from workflows.search_attributes import RELEASE_VERSION, ROLLOUT_CHANNEL

FLEET = ["web-1", "web-2", "web-3"]


async def create(admin: httpx.AsyncClient, manifest_id: str, **options: Any) -> httpx.Response:
    body = {"manifestId": manifest_id, "channel": "stable", "batchSize": 2, **options}
    return await admin.post("/api/rollouts", json=body)


async def finish_batch(env: WorkflowEnvironment, rollout: dict[str, Any]) -> None:
    """Report every open job of the current batch succeeded, as agents would."""
    batch = rollout["batches"][rollout["currentBatch"] - 1]
    for job in batch["jobs"]:
        if job["status"] in ("pending", "in_progress"):
            report = JobReportSignal(
                job_id=job["id"], instance_id=job["instanceId"], status="succeeded", step="health"
            )
            await rollout_client.report_job(env.client, rollout["id"], report, timeout=10)


async def status_becomes(admin: httpx.AsyncClient, rollout_id: str, status: str) -> dict:
    async def probe() -> dict | None:
        body = (await admin.get(f"/api/rollouts/{rollout_id}")).json()
        return body if body["status"] == status else None

    return await eventually(probe)


async def test_create_advance_refusals_and_completion(
    dev_env: WorkflowEnvironment,
    dev_worker: Worker,
    dev_admin: httpx.AsyncClient,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    release_id = await seed_release(db, dev_settings)
    await seed_instances(db, FLEET)
    await seed_instances(db, ["web-0"], version="1.4.0")  # already there: not a target

    created = await create(dev_admin, release_id)
    assert created.status_code == 201, created.text
    rollout = created.json()
    assert rollout["workflowId"] == f"rollout-{rollout['id']}"
    assert (rollout["status"], rollout["currentBatch"], rollout["totalBatches"]) == (
        "running",
        1,
        2,
    )
    assert rollout["stale"] is False
    assert [j["instanceId"] for j in rollout["batches"][0]["jobs"]] == ["web-1", "web-2"]
    assert rollout["batches"][1]["jobs"] == []
    assert rollout["counts"] == {"pending": 2}
    assert (rollout["maxFailures"], rollout["maxUnreachable"]) == (0, 0)  # the defaults

    refused = await dev_admin.post(f"/api/rollouts/{rollout['id']}/advance")
    assert refused.status_code == 409
    assert "batch 1/2 is still running" in refused.json()["detail"]
    assert (await dev_admin.post(f"/api/rollouts/{rollout['id']}/resume")).status_code == 409
    second = await create(dev_admin, release_id)
    assert second.status_code == 409
    assert rollout["id"] in second.json()["detail"]

    await finish_batch(dev_env, rollout)
    await status_becomes(dev_admin, rollout["id"], "awaiting_advance")
    # Two advances at once: exactly one releases batch 2, the other is refused.
    answers = await asyncio.gather(
        *(dev_admin.post(f"/api/rollouts/{rollout['id']}/advance") for _ in range(2))
    )
    assert sorted(a.status_code for a in answers) == [200, 409]
    advanced = next(a.json() for a in answers if a.status_code == 200)
    assert advanced["currentBatch"] == 2
    assert [j["instanceId"] for j in advanced["batches"][1]["jobs"]] == ["web-3"]
    # A dashboard's lighter views: the same rollout and counts, fewer jobs listed.
    path = f"/api/rollouts/{rollout['id']}"
    full = (await dev_admin.get(path)).json()
    for shown, listed in (("current", [[], ["web-3"]]), ("none", [[], []])):
        light = (await dev_admin.get(path, params={"jobs": shown})).json()
        assert [[j["instanceId"] for j in b["jobs"]] for b in light["batches"]] == listed
        assert light | {"batches": full["batches"]} == full
    assert full["counts"] == {"succeeded": 2, "pending": 1}
    unknown = await dev_admin.get(path, params={"jobs": "some"})
    assert unknown.status_code == 422 and "jobs" in unknown.json()["detail"]

    await finish_batch(dev_env, advanced)
    done = await status_becomes(dev_admin, rollout["id"], "completed")
    assert done["counts"] == {"succeeded": 3}
    assert done["finishedAt"] is not None
    late = await dev_admin.post(f"/api/rollouts/{rollout['id']}/pause", json={"reason": "x"})
    assert late.status_code == 409 and "completed" in late.json()["detail"]

    listed = await dev_admin.get("/api/rollouts", params={"channel": "stable"})
    assert [r["id"] for r in listed.json()] == [rollout["id"]]
    assert (await dev_admin.get("/api/rollouts", params={"channel": "beta"})).json() == []
    jobs = await dev_admin.get("/api/updates/jobs", params={"rolloutId": rollout["id"]})
    assert sorted(j["instanceId"] for j in jobs.json()) == FLEET

    async def web_3_stored_succeeded() -> bool:
        # The reports went to the workflow as signals, not through the API: the read model
        # lists them once the worker writes them, which may be after the view says completed.
        by_instance = await dev_admin.get("/api/updates/jobs", params={"instanceId": "web-3"})
        return [j["status"] for j in by_instance.json()] == ["succeeded"]

    await eventually(web_3_stored_succeeded)
    actions = [e.action for e in await audit.for_subject(db, f"rollout:{rollout['id']}")]
    assert actions[0] == "rollout.created" and actions.count("rollout.advance") == 1


@pytest.mark.parametrize(
    ("options", "status", "problem"),
    [
        ({"manifestId": "no-such-release"}, 404, "manifestId: no release"),
        ({"channel": "stable"}, 422, "channel: release 2.0.0 is for channel beta"),
        ({"channel": "beta", "batchSize": 0}, 422, "batchSize: Input should be greater than"),
        (
            {"channel": "beta", "maxUnreachable": -1},
            422,
            "maxUnreachable: Input should be greater",
        ),
        ({"channel": "beta", "colour": "red"}, 422, "colour: Extra inputs are not permitted"),
    ],
    ids=["unknown release", "channel mismatch", "batch of zero", "negative limit", "unknown field"],
)
async def test_bad_creates_are_refused_and_change_nothing(
    dev_worker: Worker,
    dev_admin: httpx.AsyncClient,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
    options: dict[str, Any],
    status: int,
    problem: str,
) -> None:
    beta_id = await seed_release(db, dev_settings, version="2.0.0", channel="beta")
    await seed_instances(db, FLEET)

    refused = await create(dev_admin, beta_id, **options)
    assert refused.status_code == status
    assert refused.json()["detail"].startswith(problem)
    assert await db.fetchval("SELECT count(*) FROM rollouts") == 0


async def test_no_targets_completes_at_once_and_frees_the_channel(
    dev_worker: Worker,
    dev_admin: httpx.AsyncClient,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    release_id = await seed_release(db, dev_settings)
    await seed_instances(db, FLEET, version="1.4.0")
    created = await create(dev_admin, release_id)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["status"] == "completed"
    assert "no instance on channel stable is below 1.4.0" in body["details"]
    assert body["totalBatches"] == 0 and body["batches"] == []
    # The channel is free again; scripts may still send the snake_case names.
    snake = {"manifest_id": release_id, "channel": "stable", "batch_size": 2}
    again = await dev_admin.post("/api/rollouts", json=snake)
    assert again.status_code == 201, again.text
    assert again.json()["batchSize"] == 2


async def test_concurrent_creates_on_one_channel_start_one_rollout(
    dev_worker: Worker,
    dev_admin: httpx.AsyncClient,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    release_id = await seed_release(db, dev_settings)
    await seed_instances(db, FLEET)
    answers = await asyncio.gather(*(create(dev_admin, release_id) for _ in range(3)))
    assert sorted(a.status_code for a in answers) == [201, 409, 409]
    assert await db.fetchval("SELECT count(*) FROM rollouts") == 1


async def test_pause_from_the_temporal_cli_shows_in_the_api_at_once(
    dev_env: WorkflowEnvironment,
    dev_worker: Worker,
    dev_admin: httpx.AsyncClient,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    release_id = await seed_release(db, dev_settings)
    await seed_instances(db, FLEET)
    rollout = (await create(dev_admin, release_id)).json()

    async def temporal_cli(*args: str) -> None:
        process = await asyncio.create_subprocess_exec(
            venv_binary("temporal"),
            *args,
            "--address",
            dev_settings.temporal_address,
            "--namespace",
            dev_settings.temporal_namespace,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await process.communicate()
        assert process.returncode == 0, output.decode()

    workflow = ["--workflow-id", rollout["workflowId"]]
    await temporal_cli("workflow", "signal", *workflow, "--name", "pause")
    paused = (await dev_admin.get(f"/api/rollouts/{rollout['id']}")).json()
    assert (paused["status"], paused["pausedReason"]) == ("paused", "paused by temporal")
    assert paused["stale"] is False

    await temporal_cli(
        "workflow", "signal", *workflow, "--name", "resume", "--input", '{"actor": "ops-oncall"}'
    )
    resumed = (await dev_admin.get(f"/api/rollouts/{rollout['id']}")).json()
    assert (resumed["status"], resumed["pausedReason"]) == ("running", None)

    async def resumed_by_oncall() -> bool:
        entries = await audit.for_subject(db, f"rollout:{rollout['id']}")
        return any(e.actor == "ops-oncall" and e.action == "rollout.resume" for e in entries)

    await eventually(resumed_by_oncall)


async def test_search_attributes_list_rollouts_by_channel_version_status(
    dev_env: WorkflowEnvironment,
    dev_worker: Worker,
    dev_admin: httpx.AsyncClient,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    release_id = await seed_release(db, dev_settings, version="3.1.0")
    await seed_instances(db, FLEET)
    rollout = (await create(dev_admin, release_id)).json()
    await dev_admin.post(f"/api/rollouts/{rollout['id']}/pause", json={"reason": "smoke"})

    async def listed() -> list[str]:
        query = (
            "RolloutChannel = 'stable' AND ReleaseVersion = '3.1.0'"
            " AND RolloutStatus = 'paused'"
            f" AND TaskQueue = '{dev_settings.temporal_task_queue}'"
        )
        return [w.id async for w in dev_env.client.list_workflows(query)]

    assert await eventually(listed) == [rollout["workflowId"]]
    handle = dev_env.client.get_workflow_handle(rollout["workflowId"])
    description = await handle.describe()
    attributes = description.typed_search_attributes
    assert attributes.get(ROLLOUT_CHANNEL) == "stable"
    assert attributes.get(RELEASE_VERSION) == "3.1.0"


async def test_stale_view_from_postgresql_while_the_worker_is_down(
    dev_env: WorkflowEnvironment,
    dev_admin: httpx.AsyncClient,
    dev_settings: ApiSettings,
    worker_pool: asyncpg.Pool,
    db: asyncpg.Connection,
) -> None:
    release_id = await seed_release(db, dev_settings)
    await seed_instances(db, FLEET)
    async with build_worker(dev_env.client, dev_settings, RolloutActivities(worker_pool)):
        rollout = (await create(dev_admin, release_id)).json()
    stale = await dev_admin.get(f"/api/rollouts/{rollout['id']}")
    assert stale.status_code == 200
    body = stale.json()
    assert body["stale"] is True
    assert (body["status"], body["currentBatch"]) == ("running", 1)
    assert [j["instanceId"] for j in body["batches"][0]["jobs"]] == ["web-1", "web-2"]
