"""Planning a rollout on real PostgreSQL and a real Temporal server: a preview shows exactly the
batches the created rollout then has, host for host; each plan kind cuts the batches it says; a
held host is left out with its reason; a preview whose targets changed is refused, naming how."""

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from api.app import create_app
from devstack.ports import free_port
from server.settings import ApiSettings
from tests.conftest import LiveServer
from tests.fixtures_temporal import seed_instances, seed_release
from tests.test_admin_cli import rollout_cli
from tests.test_rollout_api import finish_batch, status_becomes

HOSTS = [f"web-{n:02d}" for n in range(1, 21)]


def _body(release_id: str, **options: Any) -> dict[str, Any]:
    return {"manifestId": release_id, "channel": "stable", **options}


async def _preview(admin: httpx.AsyncClient, body: dict[str, Any], **query: Any) -> dict[str, Any]:
    answer = await admin.post("/api/rollouts/preview", json=body, params=query)
    assert answer.status_code == 200, answer.text
    return answer.json()


async def _hosts_of_every_batch(admin: httpx.AsyncClient, body: dict, preview: dict) -> list:
    return [(await _preview(admin, body, batch=b["number"]))["hosts"] for b in preview["batches"]]


async def test_a_preview_is_what_the_rollout_created_from_it_does(
    dev_env: WorkflowEnvironment,
    dev_worker: Worker,
    dev_admin: httpx.AsyncClient,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    release_id = await seed_release(db, dev_settings)  # migrations_required
    await seed_instances(db, HOSTS)
    await seed_instances(db, ["current-1"], version="1.4.0")
    held = await dev_admin.post("/api/instances/web-07/hold", json={"reason": "disk repair"})
    assert held.status_code == 200, held.text
    assert held.json()["holdReason"] == "disk repair"

    body = _body(release_id, batchPlan=[1, "25%", "100%"], autoAdvance=True)
    preview = await _preview(dev_admin, body)
    assert preview["targetCount"] == 19
    assert [b["size"] for b in preview["batches"]] == [1, 4, 14]
    assert preview["alreadyCurrent"] == 1
    assert [(e["reason"], e["count"], e["instances"]) for e in preview["leftOut"]] == [
        ("on_hold", 1, ["web-07"])
    ]
    assert preview["prediction"]["seconds"] > 0
    assert any("no job has succeeded" in a for a in preview["prediction"]["assumptions"])
    assert preview["warnings"] == []  # batch 1 is one host already
    planned = await _hosts_of_every_batch(dev_admin, body, preview)
    in_order = [host for hosts in planned for host in hosts]
    assert in_order == [h for h in HOSTS if h != "web-07"]  # every target once, in order

    created = await dev_admin.post(
        "/api/rollouts", json={**body, "previewId": preview["previewId"]}
    )
    assert created.status_code == 201, created.text
    rollout = created.json()
    assert rollout["totalBatches"] == 3
    assert [b["size"] for b in rollout["batches"]] == [1, 4, 14]
    assert rollout["plan"]["steps"] == [1, "25%", "100%"]
    assert [e["reason"] for e in rollout["leftOut"]] == ["on_hold"]
    ran: list[list[str]] = []
    for number in (1, 2, 3):
        rollout = await status_becomes(dev_admin, rollout["id"], "running")
        while rollout["currentBatch"] != number:
            rollout = await status_becomes(dev_admin, rollout["id"], "running")
        batch = rollout["batches"][number - 1]
        ran.append(sorted(job["instanceId"] for job in batch["jobs"]))
        await finish_batch(dev_env, rollout)
    await status_becomes(dev_admin, rollout["id"], "completed")
    assert ran == [sorted(hosts) for hosts in planned]


async def test_a_preview_whose_targets_changed_is_refused_naming_the_change(
    dev_worker: Worker,
    dev_admin: httpx.AsyncClient,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    release_id = await seed_release(db, dev_settings)
    await seed_instances(db, HOSTS[:5])
    body = _body(release_id, batchSize=2)
    preview = await _preview(dev_admin, body)
    await seed_instances(db, ["late-1"])
    await dev_admin.post("/api/instances/web-02/hold", json={"reason": "flaky disk"})

    refused = await dev_admin.post(
        "/api/rollouts", json={**body, "previewId": preview["previewId"]}
    )
    assert refused.status_code == 409, refused.text
    detail = refused.json()["detail"]
    assert "1 joined (late-1)" in detail
    assert "1 left (web-02)" in detail
    assert (await dev_admin.get("/api/rollouts")).json() == []  # nothing was created

    await dev_admin.delete("/api/instances/web-02/hold")
    again = await _preview(dev_admin, body)
    assert again["targetCount"] == 6
    created = await dev_admin.post("/api/rollouts", json={**body, "previewId": again["previewId"]})
    assert created.status_code == 201, created.text


async def test_plans_are_checked_before_anything_is_created(
    dev_worker: Worker,
    dev_admin: httpx.AsyncClient,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    release_id = await seed_release(db, dev_settings)
    await seed_instances(db, HOSTS)
    cases = [
        (_body(release_id, batchPlan=[1, 5]), "the last mark (5) leaves 15 of 20 targets out"),
        (_body(release_id, batchPlan=["50%", "10%"]), "mark 2: 10% does not grow past 50%"),
        (_body(release_id, batchSize=2, batchPlan=["100%"]), "give one of them"),
        (_body(release_id), "batchSize: required, unless batchPlan is given"),
        (_body(release_id, batchPlan={"exponential": {"first": 0, "factor": 2}}), "first"),
    ]
    for body, problem in cases:
        for path in ("/api/rollouts/preview", "/api/rollouts"):
            answer = await dev_admin.post(path, json=body)
            assert answer.status_code == 422, (path, body, answer.text)
            assert problem in answer.json()["detail"], (path, answer.json()["detail"])
    assert (await dev_admin.get("/api/rollouts")).json() == []

    exponential = await _preview(
        dev_admin, _body(release_id, batchPlan={"exponential": {"first": 1, "factor": 2}})
    )
    assert [b["size"] for b in exponential["batches"]] == [1, 2, 4, 8, 5]
    canary = await _preview(dev_admin, _body(release_id, batchSize=10, canary=True))
    assert [b["size"] for b in canary["batches"]] == [1, 10, 9]
    warned = await _preview(dev_admin, _body(release_id, batchSize=10))
    assert any("requires migrations and batch 1 has 10 hosts" in w for w in warned["warnings"])


@pytest.fixture
async def server(settings: ApiSettings) -> AsyncIterator[LiveServer]:
    async with LiveServer(create_app(settings), free_port()) as live:
        yield live


async def test_the_planning_commands(
    server: LiveServer, settings: ApiSettings, db: asyncpg.Connection
) -> None:
    release_id = await seed_release(db, settings)  # migrations_required: a canary by default
    await seed_instances(db, HOSTS[:6])
    code, out, err = await rollout_cli(
        server, settings, "instances", "hold", "web-03", "--reason", "disk repair"
    )
    assert code == 0, err
    assert "disk repair" in out
    code, out, err = await rollout_cli(
        server, settings, "rollouts", "preview", "--manifest", release_id, "--channel", "stable",
        "--plan", "50%,100%",
    )  # fmt: skip
    assert code == 0, err
    assert "canary: one host first" in err
    assert "5 hosts in 3 batches" in out
    assert "batch   1       1 hosts  web-01" in out
    assert "left out: 1 host on hold" in out
    code, out, err = await rollout_cli(
        server, settings, "rollouts", "preview", "--manifest", release_id, "--channel", "stable",
        "--batch-size", "2", "--no-canary", "--batch", "2",
    )  # fmt: skip
    assert code == 0, err
    assert "hosts: web-04, web-05" in out
    assert "requires migrations and batch 1 has 2 hosts" in out
    code, out, err = await rollout_cli(server, settings, "instances", "release", "web-03")
    assert code == 0, err
    code, _, err = await rollout_cli(
        server, settings, "rollouts", "preview", "--manifest", release_id, "--channel", "stable",
        "--plan", "1,x%",
    )  # fmt: skip
    assert code == 1
    assert "mark 2: a number of hosts or a percentage" in err
    code, _, err = await rollout_cli(
        server, settings, "rollouts", "create", "--manifest", release_id, "--channel", "stable",
        "--plan", "1,some",
    )  # fmt: skip
    assert code == 2
    assert "--plan is hosts or percentages separated by commas" in err
