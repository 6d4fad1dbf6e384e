"""A job's per-step timeline, end to end: real agent processes run real shell steps against the
API on the dev Temporal server with a live worker; the API, the CLI and the rollout view's
failure reasons all tell the story the acknowledged reports tell."""

import json

import asyncpg
import httpx

from server.settings import ApiSettings
from tests.conftest import LiveServer
from tests.fixtures_agents import AgentFactory
from tests.fixtures_fleet import FLEET_TOKEN, rollout_where
from tests.fixtures_temporal import seed_instances, seed_release
from tests.test_admin_cli import rollout_cli

UPDATE = ("preflight", "backup", "pull", "migrate", "smoke", "switch", "health")


def settled(rollout: dict) -> bool:
    jobs = rollout["batches"][0]["jobs"]
    return len(jobs) == 2 and all(j["status"] not in ("pending", "in_progress") for j in jobs)


async def test_a_rolled_back_job_shows_every_step_with_its_outcome(
    plane: LiveServer,
    admin: httpx.AsyncClient,
    settings: ApiSettings,
    db: asyncpg.Connection,
    agent_host: AgentFactory,
) -> None:
    # Known to the control plane as their first polls would make them (agents take a while to
    # start on a loaded machine); the agents poll, run and report for real.
    await seed_instances(db, ["web-1", "web-2"], version="1.0.0")
    await agent_host(plane.url, FLEET_TOKEN, instance_id="web-1", fail_at="smoke")
    await agent_host(plane.url, FLEET_TOKEN, instance_id="web-2")
    release_id = await seed_release(db, settings)
    # maxFailures 1: web-1's failure must not pause the rollout, or web-2's job is withheld when
    # web-2 happens to poll after web-1 failed, and the batch never settles.
    created = await admin.post(
        "/api/rollouts",
        json={"manifestId": release_id, "channel": "stable", "batchSize": 2, "maxFailures": 1},
    )
    assert created.status_code == 201, created.text
    rollout = await rollout_where(admin, created.json()["id"], settled)
    by_host = {j["instanceId"]: j for j in rollout["batches"][0]["jobs"]}
    failed_id, healthy_id = by_host["web-1"]["id"], by_host["web-2"]["id"]

    answer = await admin.get(f"/api/updates/jobs/{failed_id}")
    assert answer.status_code == 200, answer.text
    failed = answer.json()
    assert (failed["status"], failed["step"], failed["instanceId"]) == (
        "rolled_back",
        "smoke",
        "web-1",
    )
    steps = failed["timeline"]
    assert [(s["step"], s["outcome"]) for s in steps] == [
        ("preflight", "succeeded"),
        ("backup", "succeeded"),
        ("pull", "succeeded"),
        ("migrate", "succeeded"),
        ("smoke", "failed"),
        ("rollback", "rolled_back"),
    ]
    # Each step started when its report was acknowledged, and ended when the next one began.
    started = await db.fetch(
        "SELECT received_at FROM job_reports WHERE job_id = $1 AND status = 'in_progress'"
        " ORDER BY id",
        failed_id,
    )
    assert [s["startedAt"] for s in steps] == [
        r["received_at"].isoformat().replace("+00:00", "Z") for r in started
    ]
    assert [s["endedAt"] for s in steps[:-1]] == [s["startedAt"] for s in steps[1:]]
    assert steps[-1]["endedAt"] is not None
    smoke = steps[4]
    assert "smoke failed: exit status 3" in smoke["message"]
    assert "smoke broke on purpose" in smoke["message"]
    assert all(s["message"] is None for s in steps if s is not smoke)

    healthy = (await admin.get(f"/api/updates/jobs/{healthy_id}")).json()
    assert [(s["step"], s["outcome"]) for s in healthy["timeline"]] == [
        (step, "succeeded") for step in UPDATE
    ]
    assert "updated from 1.0.0 to 1.4.0" in healthy["timeline"][-1]["message"]

    # The rollout view names the failed job, the step it failed at and that step's output.
    view = (await admin.get(f"/api/rollouts/{rollout['id']}")).json()
    (failure,) = view["failures"]
    assert (failure["jobId"], failure["instanceId"], failure["status"], failure["step"]) == (
        failed_id,
        "web-1",
        "rolled_back",
        "smoke",
    )
    assert failure["message"] == smoke["message"]
    assert (failure["startedAt"], failure["endedAt"]) == (smoke["startedAt"], smoke["endedAt"])

    code, out, err = await rollout_cli(plane, settings, "rollouts", "get", rollout["id"])
    assert code == 0, err
    assert f"  web-1 rolled_back at smoke: rollout jobs show {failed_id}" in out.splitlines()

    # The CLI: the same JSON, and a line per step, then the failed step's output.
    code, out, err = await rollout_cli(plane, settings, "jobs", "show", failed_id, "--json")
    assert code == 0, err
    assert json.loads(out) == failed
    code, out, err = await rollout_cli(plane, settings, "jobs", "show", failed_id)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"job {failed_id}  ROLLED_BACK at smoke"
    header = next(n for n, line in enumerate(lines) if line.startswith("STEP"))
    rows = lines[header + 1 : header + 1 + len(steps)]
    assert [row.split()[:2] for row in rows] == [[s["step"], s["outcome"]] for s in steps]
    output = lines.index("smoke output:")
    assert "    smoke broke on purpose" in lines[output + 1 :]  # the message, indented


async def test_an_unknown_job_is_404_in_the_api_and_the_cli(
    plane: LiveServer, admin: httpx.AsyncClient, settings: ApiSettings
) -> None:
    answer = await admin.get("/api/updates/jobs/no-such-job")
    assert (answer.status_code, answer.json()) == (404, {"detail": "job no-such-job not found"})
    code, out, err = await rollout_cli(plane, settings, "jobs", "show", "no-such-job")
    assert (code, out) == (1, "")
    assert "rollout jobs show: 404" in err and "job no-such-job not found" in err
