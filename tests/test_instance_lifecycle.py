"""Instances have a lifecycle an operator controls (docs/protocol.md, instances): paged
listings, decommissioning, admission of new ids seen with the fleet token, and hosts not seen
for a while left out of new rollouts' targets with the reason shown. The real API over HTTP with
signed polls, on real PostgreSQL (and, for rollouts, the time-skipping Temporal server with a
real worker)."""

import secrets
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from pydantic import SecretStr
from temporalio.testing import WorkflowEnvironment

from activities.rollouts import RolloutActivities
from api.app import create_app
from devstack.ports import free_port
from server.settings import ApiSettings
from store.instances import MAX_PENDING_INSTANCES
from tests.agent_requests import assert_signed_by, poll_body, post_signed
from tests.conftest import LiveServer
from tests.fixtures_temporal import seed_instances, seed_release
from tests.test_admin_cli import rollout_cli
from worker.main import build_worker

FLEET_TOKEN = secrets.token_hex(16)
OWN_SECRET = secrets.token_hex(16)


@pytest.fixture
async def fleet(settings: ApiSettings) -> AsyncIterator[tuple[LiveServer, httpx.AsyncClient]]:
    """The API with a fleet token and one instance (`own-1`) with a secret of its own."""
    async with serving(settings) as served:
        yield served


def serving(settings: ApiSettings, **changes: object) -> "Serving":
    return Serving(
        settings.model_copy(
            update={
                "control_plane_agent_token": SecretStr(FLEET_TOKEN),
                "control_plane_agent_secrets": {"own-1": SecretStr(OWN_SECRET)},
                **changes,
            }
        )
    )


class Serving:
    def __init__(self, settings: ApiSettings) -> None:
        self.server = LiveServer(create_app(settings), free_port())
        self.token = settings.control_plane_admin_token.get_secret_value()

    async def __aenter__(self) -> tuple[LiveServer, httpx.AsyncClient]:
        await self.server.__aenter__()
        self.client = httpx.AsyncClient(
            base_url=self.server.url, headers={"x-cp-admin-token": self.token}, timeout=30
        )
        return self.server, self.client

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()
        await self.server.__aexit__(*exc)


async def poll(client: httpx.AsyncClient, instance_id: str, secret: str = FLEET_TOKEN):
    body = poll_body(instance_id)
    answer = await post_signed(client, "/api/updates/next", body, secret)
    return answer, assert_signed_by(answer, secret, body["nonce"])


async def test_listings_are_paged_and_filtered(
    fleet: tuple[LiveServer, httpx.AsyncClient], db: asyncpg.Connection
) -> None:
    _, admin = fleet
    await seed_instances(db, [f"web-{n:02}" for n in range(25)], version="1.0.0")
    await seed_instances(db, ["beta-1", "beta-2"], channel="beta", version="2.0.0")
    await db.execute(
        "UPDATE instances SET last_seen_at = now() - interval '2 days'"
        " WHERE instance_id IN ('web-03', 'beta-2')"
    )

    first = await admin.get("/api/instances", params={"channel": "stable", "limit": 10})
    assert first.status_code == 200, first.text
    assert first.headers["x-total-count"] == "25"
    assert [i["instanceId"] for i in first.json()] == [f"web-{n:02}" for n in range(10)]
    last = await admin.get("/api/instances", params={"channel": "stable", "offset": 20})
    assert [i["instanceId"] for i in last.json()] == [f"web-{n:02}" for n in range(20, 25)]
    past = await admin.get("/api/instances", params={"offset": 1000})
    assert (past.json(), past.headers["x-total-count"]) == ([], "27")

    def ids(answer: httpx.Response) -> list[str]:
        assert answer.status_code == 200, answer.text
        return [i["instanceId"] for i in answer.json()]

    assert ids(await admin.get("/api/instances", params={"version": "2.0.0"})) == [
        "beta-1",
        "beta-2",
    ]
    stale = await admin.get("/api/instances", params={"notSeenForSeconds": 86_400})
    assert ids(stale) == ["beta-2", "web-03"]
    assert ids(await admin.get("/api/instances", params={"state": "pending"})) == []
    assert {i["state"] for i in first.json()} == {"active"}
    for bad in ({"limit": 0}, {"limit": 10_001}, {"offset": -1}, {"state": "gone"}):
        refused = await admin.get("/api/instances", params=bad)
        assert refused.status_code == 422, (bad, refused.text)
        assert next(iter(bad)) in refused.json()["detail"]


async def test_a_decommissioned_instance_is_refused_until_admitted_again(
    fleet: tuple[LiveServer, httpx.AsyncClient], db: asyncpg.Connection
) -> None:
    _, admin = fleet
    answer, _ = await poll(admin, "web-1")
    assert answer.status_code == 200
    # Admission is off by default: a new id is active at its first poll.
    assert await db.fetchval("SELECT state FROM instances WHERE instance_id = 'web-1'") == "active"

    gone = await admin.delete("/api/instances/web-1")
    assert gone.status_code == 200, gone.text
    assert gone.json()["state"] == "decommissioned"
    seen = await db.fetchval("SELECT last_seen_at FROM instances WHERE instance_id = 'web-1'")

    refused, document = await poll(admin, "web-1")
    assert refused.status_code == 403
    assert "web-1 is decommissioned" in document["detail"]
    assert "/api/instances/web-1/admit" in document["detail"]
    row = await db.fetchrow("SELECT state, last_seen_at FROM instances WHERE instance_id = 'web-1'")
    assert (row["state"], row["last_seen_at"]) == ("decommissioned", seen)  # nothing recorded

    again = await admin.delete("/api/instances/web-1")
    assert (again.status_code, again.json()["state"]) == (200, "decommissioned")
    assert (await admin.delete("/api/instances/nobody")).status_code == 404
    assert (await admin.delete("/api/instances/bad%20id")).status_code == 422
    assert (await admin.post("/api/instances/nobody/admit")).status_code == 404

    admitted = await admin.post("/api/instances/web-1/admit")
    assert (admitted.status_code, admitted.json()["state"]) == (200, "active")
    answer, _ = await poll(admin, "web-1")
    assert answer.status_code == 200

    audit = await db.fetch(
        "SELECT actor, action, detail FROM audit_log WHERE subject = 'instance:web-1' ORDER BY id"
    )
    assert [(a["actor"], a["action"], a["detail"]) for a in audit] == [
        ("admin", "instance.decommissioned", {"from": "active", "to": "decommissioned"}),
        ("admin", "instance.admitted", {"from": "decommissioned", "to": "active"}),
    ]


async def test_new_ids_with_the_fleet_token_wait_for_approval_when_required(
    settings: ApiSettings, db: asyncpg.Connection
) -> None:
    async with serving(settings, new_instances_need_approval=True) as (_, admin):
        waiting, document = await poll(admin, "ghost-1")
        assert waiting.status_code == 403
        assert "ghost-1 awaits an admin's approval" in document["detail"]
        # An instance with a secret of its own was configured by an operator: admitted at once.
        own, _ = await poll(admin, "own-1", OWN_SECRET)
        assert own.status_code == 200
        listed = await admin.get("/api/instances", params={"state": "pending"})
        assert [i["instanceId"] for i in listed.json()] == ["ghost-1"]

        assert (await admin.post("/api/instances/ghost-1/admit")).json()["state"] == "active"
        admitted, _ = await poll(admin, "ghost-1")
        assert admitted.status_code == 200

        # A bounded number wait: past it, a new id is refused and not recorded.
        await db.execute(
            "INSERT INTO instances (instance_id, channel, current_version, state)"
            " SELECT 'filler-' || n, 'stable', '1.0.0', 'pending'"
            " FROM generate_series(1, $1) AS n",
            MAX_PENDING_INSTANCES,
        )
        full, document = await poll(admin, "ghost-2")
        assert full.status_code == 403
        assert f"{MAX_PENDING_INSTANCES} instances already await" in document["detail"]
        assert (
            await db.fetchval("SELECT count(*) FROM instances WHERE instance_id = 'ghost-2'") == 0
        )
        # A pending one already known still polls (and is seen).
        known, _ = await poll(admin, "filler-1")
        assert known.status_code == 403


async def test_a_rollout_leaves_out_stale_pending_and_decommissioned_hosts_and_says_why(
    ts_settings: ApiSettings,
    time_skipping_env: WorkflowEnvironment,
    worker_pool: asyncpg.Pool,
    db: asyncpg.Connection,
) -> None:
    activities = RolloutActivities(worker_pool, stale_after_seconds=86_400)
    async with (
        build_worker(time_skipping_env.client, ts_settings, activities),
        serving(ts_settings) as (server, admin),
    ):
        await seed_instances(db, ["web-1", "web-2"])
        await seed_instances(db, [f"ghost-{n:02}" for n in range(12)] + ["pend-1", "gone-1"])
        await db.execute(
            "UPDATE instances SET last_seen_at = now() - interval '3 days'"
            " WHERE instance_id LIKE 'ghost-%'"
        )
        await db.execute("UPDATE instances SET state = 'pending' WHERE instance_id = 'pend-1'")
        assert (await admin.delete("/api/instances/gone-1")).status_code == 200
        release_id = await seed_release(db, ts_settings)
        created = await admin.post(
            "/api/rollouts", json={"manifestId": release_id, "channel": "stable", "batchSize": 5}
        )
        assert created.status_code == 201, created.text
        rollout = created.json()
        assert rollout["targetCount"] == 2
        jobs = rollout["batches"][0]["jobs"]
        assert sorted(j["instanceId"] for j in jobs) == ["web-1", "web-2"]
        left_out = {entry["reason"]: entry for entry in rollout["leftOut"]}
        assert left_out["not_seen"]["count"] == 12
        assert left_out["not_seen"]["instances"] == [f"ghost-{n:02}" for n in range(10)]
        assert left_out["not_seen"]["description"].startswith("not seen for over 1 day")
        assert (left_out["pending"]["count"], left_out["pending"]["instances"]) == (1, ["pend-1"])
        assert left_out["decommissioned"]["instances"] == ["gone-1"]

        code, out, err = await rollout_cli(server, ts_settings, "rollouts", "get", rollout["id"])
        assert code == 0, err
        assert "left out: 12 hosts not seen for over 1 day" in out
        assert "ghost-00, ghost-01" in out and "ghost-09, …" in out
        assert "left out: 1 host awaiting an admin's approval: pend-1" in out
        audit = await db.fetchval(
            "SELECT detail FROM audit_log WHERE action = 'rollout.targets_left_out'"
            " AND subject = $1",
            f"rollout:{rollout['id']}",
        )
        assert [e["reason"] for e in audit["leftOut"]] == ["decommissioned", "not_seen", "pending"]


async def test_the_instance_commands(
    fleet: tuple[LiveServer, httpx.AsyncClient], settings: ApiSettings, db: asyncpg.Connection
) -> None:
    server, _ = fleet
    await seed_instances(db, [f"web-{n}" for n in range(5)])
    code, out, err = await rollout_cli(server, settings, "instances", "list", "--limit", "2")
    assert code == 0, err
    assert "web-0" in out and "web-2" not in out
    assert "(2 of 5 instances, from number 1; --offset 2 for the next page)" in out
    code, out, _ = await rollout_cli(server, settings, "instances", "decommission", "web-3")
    assert code == 0 and "decommissioned" in out
    code, out, _ = await rollout_cli(
        server, settings, "instances", "list", "--state", "decommissioned", "--json"
    )
    assert code == 0 and '"instanceId": "web-3"' in out
    code, out, _ = await rollout_cli(server, settings, "instances", "admit", "web-3")
    assert code == 0 and "active" in out
    code, _, err = await rollout_cli(server, settings, "instances", "show", "nobody")
    assert code == 1 and "404" in err and "instance nobody not found" in err
