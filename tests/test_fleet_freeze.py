"""A fleet freeze on real PostgreSQL and a real Temporal server: during a running batch, held and
plain polls get no pending job, no rollout is created or advanced, running jobs finish; lifting
it hands the jobs out with their whole time, and every change is audited."""

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from pydantic import SecretStr
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from api.app import create_app
from contract.long_poll import POLL_WAIT_HEADER
from devstack.ports import free_port
from server.settings import ApiSettings
from tests.agent_requests import body_for, poll_body, post_signed
from tests.conftest import LiveServer
from tests.fixtures_temporal import seed_instances, seed_release
from tests.test_admin_cli import rollout_cli
from tests.test_rollout_api import create, status_becomes

TOKEN = secrets.token_hex(16)


@pytest.fixture
async def api(dev_settings: ApiSettings) -> AsyncIterator[httpx.AsyncClient]:
    """The API with a fleet token, so hosts can poll it; as an admin client."""
    configured = dev_settings.model_copy(update={"control_plane_agent_token": SecretStr(TOKEN)})
    admin_token = configured.control_plane_admin_token.get_secret_value()
    async with (
        LiveServer(create_app(configured), free_port()) as server,
        httpx.AsyncClient(
            base_url=server.url, headers={"x-cp-admin-token": admin_token}, timeout=60
        ) as client,
    ):
        yield client


async def _poll(api: httpx.AsyncClient, host: str, hold: int = 0) -> dict | None:
    headers = {POLL_WAIT_HEADER: str(hold)} if hold else {}
    raw = poll_body(host, version="1.3.0")
    api.headers.update(headers)
    try:
        answer = await post_signed(api, "/api/updates/next", raw, TOKEN)
    finally:
        for name in headers:
            del api.headers[name]
    assert answer.status_code == 200, answer.text
    return answer.json()["job"]


async def test_a_freeze_stops_the_line_until_it_is_lifted(
    dev_env: WorkflowEnvironment,
    dev_worker: Worker,
    dev_settings: ApiSettings,
    api: httpx.AsyncClient,
    db: asyncpg.Connection,
) -> None:
    release_id = await seed_release(db, dev_settings)
    await seed_instances(db, ["a", "b", "c", "d"])
    created = await create(api, release_id, batchSize=2)
    assert created.status_code == 201, created.text
    rollout = created.json()
    job_a = await _poll(api, "a")
    assert job_a is not None  # a took its job before the freeze and started it: it runs on
    started = body_for("a", jobId=job_a["id"], status="in_progress", step="preflight")
    assert (await post_signed(api, "/api/updates/report", started, TOKEN)).status_code == 200

    frozen = await api.post("/api/freeze", json={"reason": "change freeze", "channel": "stable"})
    assert frozen.status_code == 200, frozen.text
    assert frozen.json()["rollouts"] == [rollout["id"]]
    view = (await api.get(f"/api/rollouts/{rollout['id']}")).json()
    assert view["status"] == "waiting"
    assert "the fleet is frozen (change freeze)" in view["details"]

    assert await _poll(api, "b", hold=1) is None  # held, and still nothing while frozen
    assert await _poll(api, "b") is None
    finished = body_for("a", jobId=job_a["id"], status="succeeded", step="health")
    assert (await post_signed(api, "/api/updates/report", finished, TOKEN)).status_code == 200
    refused = await api.post(f"/api/rollouts/{rollout['id']}/advance")
    assert refused.status_code == 409
    assert "frozen" in refused.json()["detail"]
    again = await create(api, release_id, batchSize=1)
    assert again.status_code == 409
    assert "channel stable is frozen" in again.json()["detail"]
    status = (await api.get("/api/freeze")).json()
    assert [(f["channel"], f["reason"]) for f in status["freezes"]] == [("stable", "change freeze")]

    held = asyncio.create_task(_poll(api, "b", hold=20))  # held across the thaw
    thawed = await api.delete("/api/freeze", params={"channel": "stable"})
    assert thawed.status_code == 200, thawed.text
    assert thawed.json() == {"freezes": [], "rollouts": [rollout["id"]]}
    job_b = await asyncio.wait_for(held, 30)
    assert job_b is not None  # woken by the thaw's write, not at its hold's end
    await status_becomes(api, rollout["id"], "running")

    audit = await db.fetch(
        "SELECT action FROM audit_log WHERE subject IN ('freeze:stable', $1) ORDER BY id",
        f"rollout:{rollout['id']}",
    )
    actions = [r["action"] for r in audit]
    assert "fleet.frozen" in actions and "fleet.thawed" in actions
    assert "rollout.frozen" in actions and "rollout.thawed" in actions


async def test_a_fleet_wide_freeze_holds_every_channel_until_both_are_lifted(
    dev_env: WorkflowEnvironment,
    dev_worker: Worker,
    dev_settings: ApiSettings,
    api: httpx.AsyncClient,
    db: asyncpg.Connection,
) -> None:
    release_id = await seed_release(db, dev_settings)
    await seed_instances(db, ["a", "b"])
    rollout = (await create(api, release_id, batchSize=1)).json()
    assert (await api.post("/api/freeze", json={"reason": "everything"})).status_code == 200
    assert (await api.post("/api/freeze", json={"reason": "ours", "channel": "stable"})).json()[
        "rollouts"
    ] == [rollout["id"]]
    lifted = await api.delete("/api/freeze")  # the fleet-wide one; stable's own still holds
    assert lifted.json()["rollouts"] == []
    assert (await api.get(f"/api/rollouts/{rollout['id']}")).json()["status"] == "waiting"
    lifted = await api.delete("/api/freeze", params={"channel": "stable"})
    assert lifted.json()["rollouts"] == [rollout["id"]]
    await status_becomes(api, rollout["id"], "running")


@pytest.fixture
async def plain_api(settings: ApiSettings) -> AsyncIterator[LiveServer]:
    async with LiveServer(create_app(settings), free_port()) as server:
        yield server


async def test_the_freeze_and_window_commands(plain_api: LiveServer, settings: ApiSettings) -> None:
    code, out, err = await rollout_cli(plain_api, settings, "freeze", "status")
    assert (code, out.strip()) == (0, "not frozen"), err
    code, out, err = await rollout_cli(
        plain_api, settings, "freeze", "on", "--reason", "quarter end", "--channel", "beta"
    )
    assert code == 0, err
    assert "beta" in out and "quarter end" in out
    code, out, err = await rollout_cli(plain_api, settings, "freeze", "off", "--channel", "beta")
    assert (code, out.strip()) == (0, "not frozen"), err

    code, out, err = await rollout_cli(
        plain_api, settings, "windows", "set", "--channel", "stable",
        "--window", "mon-fri 22:00-04:00", "--window", "sat,sun 01:00-06:00",
        "--timezone", "Europe/Berlin",
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == (
        "channel stable: mon,tue,wed,thu,fri 22:00-04:00; sat,sun 01:00-06:00 (Europe/Berlin)"
    )
    code, out, _ = await rollout_cli(plain_api, settings, "windows", "show", "--channel", "stable")
    assert "Europe/Berlin" in out
    code, _, err = await rollout_cli(
        plain_api, settings, "windows", "set", "--channel", "stable", "--window", "someday"
    )
    assert code == 2 and "--window 'someday': days and hours like" in err
    code, _, err = await rollout_cli(
        plain_api, settings, "windows", "set", "--channel", "stable",
        "--window", "daily 02:00-04:00", "--timezone", "Mars/Olympus",
    )  # fmt: skip
    assert code == 1 and "not an IANA time zone" in err
    code, out, _ = await rollout_cli(plain_api, settings, "windows", "clear", "--channel", "stable")
    assert code == 0
    code, _, err = await rollout_cli(plain_api, settings, "windows", "show", "--channel", "stable")
    assert code == 1 and "has no default maintenance window" in err


async def test_a_rollout_takes_its_channels_default_window(
    dev_env: WorkflowEnvironment,
    dev_worker: Worker,
    dev_settings: ApiSettings,
    api: httpx.AsyncClient,
    db: asyncpg.Connection,
) -> None:
    release_id = await seed_release(db, dev_settings)
    await seed_instances(db, ["a"])
    now = datetime.now(UTC)
    closed_now = {  # an hour a day, starting in two hours: closed now
        "timezone": "UTC",
        "ranges": [
            {
                "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                "start": f"{now + timedelta(hours=2):%H:%M}",
                "end": f"{now + timedelta(hours=3):%H:%M}",
            }
        ],
    }
    put = await api.put("/api/channels/stable/window", json=closed_now)
    assert put.status_code == 200, put.text
    created = await create(api, release_id, batchSize=1)
    assert created.status_code == 201, created.text
    rollout = created.json()
    assert rollout["window"] == closed_now
    assert rollout["status"] == "waiting"
    assert "outside its maintenance window (opens" in rollout["details"]
    refused = await api.post(f"/api/rollouts/{rollout['id']}/advance")
    assert refused.status_code == 409
    assert "advance with force to release it now" in refused.json()["detail"]
