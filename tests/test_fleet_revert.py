"""Fleet revert end to end: real agent processes running shell steps, the real API, worker,
Temporal dev server and PostgreSQL. Hosts a rollout updated go back to what each ran before; the
marker file each host's own switch command writes says what it runs."""

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
from temporalio.testing import WorkflowEnvironment

from contract.downgrade import DowngradePermission
from contract.manifest import ReleaseManifest
from devstack.ports import free_port
from server.settings import ApiSettings
from tests.agent_requests import assert_signed_by, body_for, poll_body, post_signed
from tests.conftest import LiveServer
from tests.fixtures_agents import AgentFactory
from tests.fixtures_fleet import FLEET_TOKEN, registered, rollout_where
from tests.fixtures_temporal import eventually, seed_release
from tests.test_admin_cli import rollout_cli
from tests.test_fleet_end_to_end import job_of, start_rollout

REVERT_STEPS = ["backup", "pull", "migrate", "smoke", "switch"]


def finished(status: str) -> Any:
    return lambda r: r["status"] == status


async def revert(admin: httpx.AsyncClient, rollout_id: str, **body: Any) -> httpx.Response:
    return await admin.post(f"/api/rollouts/{rollout_id}/revert", json={"batchSize": 1, **body})


async def audit_actions(db: asyncpg.Connection, subject: str) -> list[str]:
    rows = await db.fetch("SELECT action FROM audit_log WHERE subject = $1 ORDER BY id", subject)
    return [r["action"] for r in rows]


async def test_a_paused_rollout_is_reverted_through_a_freeze_host_by_host(
    plane: LiveServer,
    admin: httpx.AsyncClient,
    agent_host: AgentFactory,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    releases = {
        v: await seed_release(db, dev_settings, version=v, migrations_required=False)
        for v in ("1.0.0", "1.1.0", "1.4.0")
    }
    on_1_0 = await agent_host(plane.url, FLEET_TOKEN, instance_id="web-1", current_version="1.0.0")
    on_1_1 = await agent_host(plane.url, FLEET_TOKEN, instance_id="web-2", current_version="1.1.0")
    # 0.9.0 was never uploaded: nothing to go back to, and nothing guessed.
    on_0_9 = await agent_host(plane.url, FLEET_TOKEN, instance_id="web-3", current_version="0.9.0")
    # Fails its smoke once the others succeeded, rolls back: the rollout pauses.
    failing = await agent_host(
        plane.url,
        FLEET_TOKEN,
        instance_id="web-4",
        current_version="1.0.0",
        fail_at="smoke",
        block_at="smoke",
    )
    await registered(admin, 4)
    rollout = await start_rollout(admin, releases["1.4.0"], batchSize=4)
    await rollout_where(
        admin,
        rollout["id"],
        lambda r: all(job_of(r, h)["status"] == "succeeded" for h in ("web-1", "web-2", "web-3")),
    )
    await failing.wait_blocked("smoke")
    failing.open_gate()
    await rollout_where(admin, rollout["id"], finished("paused"))
    frozen = await admin.post("/api/freeze", json={"reason": "incident 42"})
    assert frozen.status_code == 200, frozen.text

    refused = await revert(admin, rollout["id"])
    assert refused.status_code == 409, refused.text
    assert "freezeOverride" in refused.json()["detail"]
    unchanged = (await admin.get(f"/api/rollouts/{rollout['id']}")).json()
    assert (unchanged["status"], unchanged["revertedBy"]) == ("paused", None)

    override = {"freezeOverride": "incident 42: 1.4.0 corrupts sessions"}
    preview = await admin.post(f"/api/rollouts/{rollout['id']}/revert/preview", json=override)
    assert preview.status_code == 200, preview.text
    planned = preview.json()
    assert planned["targetCount"] == 2
    assert {(t["version"], t["hosts"]) for t in planned["targets"]} == {("1.0.0", 1), ("1.1.0", 1)}
    assert [(e["reason"], e["instances"]) for e in planned["leftOut"]] == [
        ("no_previous_release", ["web-3"])
    ]
    assert any("reverting aborts it first" in w for w in planned["warnings"])

    started = await revert(admin, rollout["id"], autoAdvance=True, **override)
    assert started.status_code == 201, started.text
    reverting = started.json()
    assert reverting["revertOf"] == rollout["id"]
    assert reverting["freezeOverride"] == override["freezeOverride"]
    done = await rollout_where(admin, reverting["id"], finished("completed"))
    assert done["counts"] == {"succeeded": 2}
    assert {j["instanceId"]: j["releaseId"] for b in done["batches"] for j in b["jobs"]} == {
        "web-1": releases["1.0.0"],
        "web-2": releases["1.1.0"],
    }

    # One story: the paused rollout was aborted by the revert, which names it.
    original = (await admin.get(f"/api/rollouts/{rollout['id']}")).json()
    assert (original["status"], original["revertedBy"]) == ("aborted", reverting["id"])
    assert "rollout.reverted" in await audit_actions(db, f"rollout:{rollout['id']}")
    assert "fleet.freeze_overridden" in await audit_actions(db, f"rollout:{reverting['id']}")
    # Each host as its own commands left it.
    assert (on_1_0.current(), on_1_1.current(), on_0_9.current(), failing.current()) == (
        "1.0.0",
        "1.1.0",
        "1.4.0",
        "1.0.0",
    )
    assert on_1_0.steps()[-5:] == [f"{step} 1.0.0" for step in REVERT_STEPS]
    assert on_1_1.steps()[-1] == "switch 1.1.0"
    assert not any("1.0.0" in line for line in failing.steps())  # rolled back, not reverted
    assert on_1_0.state()["current_version"] == "1.0.0"
    # Again: the hosts it took back, and the one that rolled back, are off 1.4.0 now.
    again = await revert(admin, rollout["id"], **override)
    assert again.status_code == 409, again.text
    assert "nothing to revert" in again.json()["detail"]
    assert (
        "1 no previous release; 3 no longer on what their job installed" in (again.json()["detail"])
    )


async def test_a_migrations_release_reverts_only_with_a_restore_plan(
    plane: LiveServer,
    admin: httpx.AsyncClient,
    agent_host: AgentFactory,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    await seed_release(db, dev_settings, version="1.0.0", migrations_required=False)
    migrating = await seed_release(db, dev_settings, version="1.4.0", migrations_required=True)
    script = '"$(dirname "$AGENT_TEST_STEPS_FILE")/step.sh"'
    host = await agent_host(
        plane.url,
        FLEET_TOKEN,
        instance_id="db-1",
        extra_env={
            # The backup's last line is its reference; the restore gets it back.
            "UPDATE_BACKUP_CMD": f'sh {script} backup && echo "snapshot-before-$UPDATE_VERSION"',
            "UPDATE_RESTORE_CMD": 'echo "restore $UPDATE_VERSION from $UPDATE_BACKUP_REF"'
            ' >> "$AGENT_TEST_STEPS_FILE"',
        },
    )
    await registered(admin, 1)
    rollout = await start_rollout(admin, migrating, batchSize=1)
    await rollout_where(admin, rollout["id"], finished("completed"))
    assert host.state()["backups"] == {"1.4.0": "snapshot-before-1.4.0"}

    # As an operator types it.
    code, _, err = await rollout_cli(plane, dev_settings, "rollouts", "revert", rollout["id"])
    assert code != 0 and "restore" in err and "migrations_required" in err, err
    assert len((await admin.get("/api/rollouts")).json()) == 1  # nothing was created

    code, out, err = await rollout_cli(
        plane,
        dev_settings,
        "rollouts",
        "revert",
        rollout["id"],
        "--restore",
        "agent",
        "--restore-note",
        "from snapshots",
        "--json",
    )
    assert code == 0, err
    reverting = json.loads(out)
    assert (reverting["restore"], reverting["revertOf"]) == ("agent", rollout["id"])
    await rollout_where(admin, reverting["id"], finished("completed"))
    code, out, _ = await rollout_cli(plane, dev_settings, "rollouts", "get", rollout["id"])
    assert code == 0 and f"reverted by rollout {reverting['id']}" in out, out
    assert host.steps()[-6:] == [
        "backup 1.0.0",
        "pull 1.0.0",
        "restore 1.0.0 from snapshot-before-1.4.0",
        "migrate 1.0.0",
        "smoke 1.0.0",
        "switch 1.0.0",
    ]
    assert host.current() == "1.0.0"


async def _contract_agent(
    url: str, instance_id: str, state_dir: Path
) -> asyncio.subprocess.Process:
    """An agent from before fleet reverts, written from PROTOCOL.md alone: it declares no
    capability (tests/contract_agent.py)."""
    env = {
        "PATH": os.environ["PATH"],
        "CONTROL_PLANE_URL": url,
        "AGENT_INSTANCE_ID": instance_id,
        "AGENT_SECRET": FLEET_TOKEN,
        "AGENT_CURRENT_VERSION": "1.0.0",
        "AGENT_STATE_DIR": str(state_dir),
    }
    script = Path(__file__).parent / "contract_agent.py"
    return await asyncio.create_subprocess_exec(sys.executable, str(script), env=env)


async def test_an_agent_that_does_not_check_permissions_is_not_sent_a_revert_job(
    plane: LiveServer,
    admin: httpx.AsyncClient,
    agent_host: AgentFactory,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    await seed_release(db, dev_settings, version="1.0.0", migrations_required=False)
    target = await seed_release(db, dev_settings, version="1.4.0", migrations_required=False)
    new = await agent_host(plane.url, FLEET_TOKEN, instance_id="new-agent")
    old = await _contract_agent(plane.url, "old-agent", tmp_path / "old")
    try:
        await registered(admin, 2)
        fleet = {i["instanceId"]: i for i in (await admin.get("/api/instances")).json()}
        assert fleet["old-agent"]["acceptsDowngrade"] is False
        assert fleet["new-agent"]["acceptsDowngrade"] is True
        rollout = await start_rollout(admin, target, batchSize=2)
        await rollout_where(admin, rollout["id"], finished("completed"))

        preview = await admin.post(f"/api/rollouts/{rollout['id']}/revert/preview", json={})
        assert [(e["reason"], e["instances"]) for e in preview.json()["leftOut"]] == [
            ("agent_too_old", ["old-agent"])
        ]
        started = await revert(admin, rollout["id"])
        assert started.status_code == 201, started.text
        done = await rollout_where(admin, started.json()["id"], finished("completed"))
        assert [e["reason"] for e in done["leftOut"]] == ["agent_too_old"]
        assert [j["instanceId"] for b in done["batches"] for j in b["jobs"]] == ["new-agent"]
        assert new.current() == "1.0.0"
        assert (tmp_path / "old" / "current").read_text() == "1.4.0"
        assert old.returncode is None  # it polled on throughout, never handed a revert job
    finally:
        old.kill()
        await old.wait()


async def test_a_revert_job_is_handed_out_with_its_permission_only_to_an_agent_that_checks_them(
    plane: LiveServer,
    admin: httpx.AsyncClient,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    """The gate at the poll, for an agent replaced after the revert was made by one that does
    not declare the capability: withheld, never handed out to be refused (or not checked)."""
    previous = await seed_release(db, dev_settings, version="1.0.0", migrations_required=False)
    target = await seed_release(db, dev_settings, version="1.4.0", migrations_required=False)
    async with httpx.AsyncClient(base_url=plane.url, timeout=30) as agent:

        async def poll(version: str, capable: bool) -> dict[str, Any]:
            declared = ["downgrade"] if capable else []
            body = poll_body("web-1", version=version, capabilities=declared)
            answer = await post_signed(agent, "/api/updates/next", body, FLEET_TOKEN)
            assert answer.status_code == 200, answer.text
            return assert_signed_by(answer, FLEET_TOKEN, body["nonce"])

        async def report(job_id: str, status: str) -> None:
            body = body_for("web-1", jobId=job_id, status=status, step="health")
            answer = await post_signed(agent, "/api/updates/report", body, FLEET_TOKEN)
            assert answer.status_code == 200, answer.text

        await poll("1.0.0", True)
        rollout = await start_rollout(admin, target, batchSize=1)
        job = (await poll("1.0.0", True))["job"]
        assert "downgrade" not in job  # going up needs no permission
        await report(job["id"], "succeeded")
        await rollout_where(admin, rollout["id"], finished("completed"))
        await poll("1.4.0", True)

        started = await revert(admin, rollout["id"])
        assert started.status_code == 201, started.text

        async def handed_out() -> dict[str, Any] | None:
            return (await poll("1.4.0", True))["job"]

        assert (await poll("1.4.0", False))["job"] is None
        reverting = await eventually(handed_out)
        assert (await poll("1.4.0", False))["job"] is None
        assert reverting["manifest"]["version"] == "1.0.0"
        permission = DowngradePermission.model_validate(reverting["downgrade"])
        assert (permission.jobId, permission.instanceId) == (reverting["id"], "web-1")
        assert (permission.fromVersion, permission.toVersion) == ("1.4.0", "1.0.0")
        assert permission.expiresAt == reverting["deadline"]
        manifest = ReleaseManifest.model_validate(reverting["manifest"])
        assert manifest.sha == permission.sha
        refusal = permission.refusal(
            FLEET_TOKEN,
            job_id=reverting["id"],
            instance_id="web-1",
            current_version="1.4.0",
            manifest=manifest,
        )
        assert refusal is None
        job_row = await db.fetchrow(
            "SELECT release_id FROM update_jobs WHERE id = $1", reverting["id"]
        )
        assert job_row["release_id"] == previous


async def test_an_aborted_auto_revert_rollout_takes_its_hosts_back_by_itself(
    plane: LiveServer,
    admin: httpx.AsyncClient,
    agent_host: AgentFactory,
    dev_settings: ApiSettings,
    dev_env: WorkflowEnvironment,
    db: asyncpg.Connection,
) -> None:
    await seed_release(db, dev_settings, version="1.0.0", migrations_required=False)
    target = await seed_release(db, dev_settings, version="1.4.0", migrations_required=True)
    hosts = [await agent_host(plane.url, FLEET_TOKEN, instance_id=f"web-{n}") for n in (1, 2, 3)]
    await registered(admin, 3)
    without_terms = await admin.post(
        "/api/rollouts",
        json={"manifestId": target, "channel": "stable", "batchSize": 2, "autoRevert": True},
    )
    assert without_terms.status_code == 422, without_terms.text
    assert "autoRevertRestore" in without_terms.json()["detail"]

    rollout = await start_rollout(admin, target, autoRevert=True, autoRevertRestore="not_needed")
    await rollout_where(admin, rollout["id"], finished("awaiting_advance"))
    aborted = await admin.post(
        f"/api/rollouts/{rollout['id']}/abort", json={"reason": "error rate up"}
    )
    assert aborted.status_code == 200, aborted.text

    async def reverted_by() -> str | None:
        return (await admin.get(f"/api/rollouts/{rollout['id']}")).json()["revertedBy"]

    revert_id = await eventually(reverted_by)
    done = await rollout_where(admin, revert_id, finished("completed"))
    assert (done["revertOf"], done["createdBy"], done["restore"]) == (
        rollout["id"],
        "auto-revert",
        "not_needed",
    )
    assert [h.current() for h in hosts] == ["1.0.0", "1.0.0", "1.0.0"]
    assert hosts[2].steps() == []  # batch 2 was never released: nothing to take back
    assert "rollout.reverted" in await audit_actions(db, f"rollout:{rollout['id']}")
    # One story in Temporal too: the rollout's run started the revert as its child.
    history = await dev_env.client.get_workflow_handle(f"rollout-{rollout['id']}").fetch_history()
    started = [
        e.start_child_workflow_execution_initiated_event_attributes.workflow_id
        for e in history.events
        if e.HasField("start_child_workflow_execution_initiated_event_attributes")
    ]
    assert started == [f"rollout-{revert_id}"]


async def test_a_failing_health_gate_aborts_an_auto_revert_rollout_and_reverts_it(
    plane: LiveServer,
    admin: httpx.AsyncClient,
    agent_host: AgentFactory,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    async def unhealthy(_: object) -> Response:
        return Response(status_code=503)

    probed = Starlette(routes=[Route("/healthz", unhealthy)])
    async with LiveServer(probed, free_port()) as app:
        await seed_release(db, dev_settings, version="1.0.0", migrations_required=False)
        target = await seed_release(db, dev_settings, version="1.4.0", migrations_required=False)
        first = await agent_host(plane.url, FLEET_TOKEN, instance_id="web-1")
        second = await agent_host(plane.url, FLEET_TOKEN, instance_id="web-2")
        await registered(admin, 2)
        gate = {"name": "app", "kind": "http", "url": f"{app.url}/healthz"}
        rollout = await start_rollout(
            admin, target, batchSize=1, autoAdvance=True, autoRevert=True, gates=[gate]
        )
        aborted = await rollout_where(admin, rollout["id"], finished("aborted"))
        assert "health gate failed: gate app: " in aborted["details"], aborted["details"]
        assert "reverting the hosts it updated (autoRevert)" in aborted["details"]

        async def reverted_by() -> str | None:
            return (await admin.get(f"/api/rollouts/{rollout['id']}")).json()["revertedBy"]

        revert_id = await eventually(reverted_by)
        done = await rollout_where(admin, revert_id, finished("completed"))
        assert (done["createdBy"], done["counts"]) == ("auto-revert", {"succeeded": 1})
        assert first.current() == "1.0.0" and first.steps()[-1] == "switch 1.0.0"
        assert second.steps() == []  # batch 2 never went out
