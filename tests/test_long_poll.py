"""Held polls (api.agents.held_polls, docs/protocol.md "Held polls"): asked for with a header,
advertised with another, bounded per process, dropped when the agent hangs up, woken by the
worker's PostgreSQL notice (and by the listener coming back after losing its connection), and
answered with the job well before the hold ends, through the API or a real agent."""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr
from starlette.requests import Request

from api.agents.auth import Verified
from api.agents.held_polls import LISTENER_APPLICATION_NAME, Dispatcher
from api.app import create_app
from contract.long_poll import LONG_POLL_HEADER, POLL_WAIT_HEADER
from contract.wire import PollRequest
from devstack.ports import free_port
from domain.jobs import JobWrite
from domain.rollouts import RolloutSpec
from server.settings import ApiSettings
from store import jobs, polls, releases, rollouts
from store.pool import open_pool
from tests.agent_requests import assert_signed_by, body_for, hmac_hex, poll_body, post_signed
from tests.conftest import LiveServer
from tests.fixtures_fleet import rollout_where, seed_running_rollout, write_pending_jobs
from tests.fixtures_temporal import eventually, seed_release

TOKEN = "long-poll-fleet-token-0123456789"


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def _held_polls(count: float) -> bool:
    return _sample("rollout_held_polls") == count


async def _poll(
    http: httpx.AsyncClient, instance_id: str, wait: str | None = None
) -> tuple[httpx.Response, dict | None]:
    """A signed poll as an agent sends it; the answer and its verified job."""
    body = poll_body(instance_id)
    raw = httpx.Request("POST", "/", json=body).content
    headers = {"content-type": "application/json", "x-agent-signature": hmac_hex(TOKEN, raw)}
    if wait is not None:
        headers[POLL_WAIT_HEADER] = wait
    answer = await http.post("/api/updates/next", content=raw, headers=headers)
    if answer.status_code != 200:
        return answer, None
    return answer, assert_signed_by(answer, TOKEN, body["nonce"])["job"]


@pytest.fixture
def fleet_settings(settings: ApiSettings) -> ApiSettings:
    return settings.model_copy(update={"control_plane_agent_token": SecretStr(TOKEN)})


@asynccontextmanager
async def _serve(settings: ApiSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        LiveServer(create_app(settings), free_port()) as server,
        httpx.AsyncClient(base_url=server.url, timeout=60) as http,
    ):
        yield http


@pytest.fixture
async def fleet_api(fleet_settings: ApiSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with _serve(fleet_settings) as http:
        yield http


async def test_a_poll_without_the_header_is_answered_at_once_and_told_holds_exist(
    fleet_api: httpx.AsyncClient,
) -> None:
    """An agent older than held polls sees the plain protocol, plus a header it ignores."""
    async with asyncio.timeout(20):  # below the 25 s a held poll could take
        answer, job = await _poll(fleet_api, "web-1")
    assert answer.status_code == 200 and job is None
    assert answer.headers[LONG_POLL_HEADER] == "25"


async def test_a_held_poll_with_nothing_to_hand_out_ends_with_a_signed_null(
    fleet_settings: ApiSettings,
) -> None:
    """Asking more than offered gets the most offered."""
    async with _serve(fleet_settings.model_copy(update={"long_poll_max_seconds": 1})) as http:
        started = time.monotonic()
        async with asyncio.timeout(20):
            answer, job = await _poll(http, "web-1", wait="999")
        assert answer.status_code == 200 and job is None
        assert time.monotonic() - started >= 1.0  # held for the time offered
        assert answer.headers[LONG_POLL_HEADER] == "1"


async def test_a_malformed_wait_is_refused_naming_the_header_and_claims_no_nonce(
    fleet_api: httpx.AsyncClient,
) -> None:
    body = poll_body("web-1")
    raw = httpx.Request("POST", "/", json=body).content
    headers = {"content-type": "application/json", "x-agent-signature": hmac_hex(TOKEN, raw)}
    refused = await fleet_api.post(
        "/api/updates/next", content=raw, headers={**headers, POLL_WAIT_HEADER: "soon"}
    )
    assert refused.status_code == 422
    assert POLL_WAIT_HEADER in assert_signed_by(refused, TOKEN, body["nonce"])["detail"]
    again = await fleet_api.post("/api/updates/next", content=raw, headers=headers)
    assert again.status_code == 200, again.text  # the nonce was not used up


async def test_past_the_bound_a_poll_is_answered_at_once_and_a_hung_up_hold_is_dropped(
    fleet_settings: ApiSettings,
) -> None:
    settings = fleet_settings.model_copy(update={"long_poll_max_held": 1})
    held_before, refused_before = (
        _sample("rollout_held_polls"),
        _sample("rollout_poll_holds_refused_total"),
    )
    async with _serve(settings) as http:
        async with httpx.AsyncClient(base_url=http.base_url, timeout=60) as first_client:
            first = asyncio.create_task(_poll(first_client, "web-1", wait="25"))
            await eventually(lambda: _held_polls(held_before + 1))
            async with asyncio.timeout(20):  # below the 25 s of a hold
                answer, job = await _poll(http, "web-2", wait="25")
            assert answer.status_code == 200 and job is None
            assert _sample("rollout_poll_holds_refused_total") == refused_before + 1
            first.cancel()  # the agent hangs up mid-hold
        await eventually(lambda: _held_polls(held_before))


async def test_with_holds_turned_off_nothing_is_offered_or_held(
    fleet_settings: ApiSettings,
) -> None:
    async with _serve(fleet_settings.model_copy(update={"long_poll_max_seconds": 0})) as http:
        async with asyncio.timeout(20):  # below the 25 s of a hold
            answer, job = await _poll(http, "web-1", wait="25")
        assert answer.status_code == 200 and job is None
        assert LONG_POLL_HEADER not in answer.headers


# --- the dispatcher on its own: notices and a lost listening connection --------------------


def _held_request() -> Request:
    """A poll's request as the route sees it once its body was read: the client stays."""

    async def never_hangs_up() -> dict:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    scope = {"type": "http", "headers": [(POLL_WAIT_HEADER.encode(), b"25")]}
    return Request(scope, receive=never_hangs_up)


def _call(instance_id: str) -> Verified[PollRequest]:
    body = PollRequest.model_validate(poll_body(instance_id))
    return Verified(body=body, secret=TOKEN, nonce_expires_at=datetime.now(UTC))


async def _open_job(db: asyncpg.Connection, settings: ApiSettings, instance_id: str) -> str:
    """A pending job of a new rollout, written the way the worker writes it, but unannounced."""
    rollout_id = f"r-{instance_id}"
    release_id = await seed_release(db, settings, version="1.4.0")
    spec = RolloutSpec(
        id=rollout_id,
        manifest_id=release_id,
        version="1.4.0",
        channel="stable",
        batch_size=1,
        created_by="admin",
    )
    await rollouts.insert(db, spec)
    write = JobWrite(
        id=f"j-{instance_id}",
        rollout_id=rollout_id,
        instance_id=instance_id,
        batch=1,
        attempt=1,
        status="pending",
        deadline=datetime.now(UTC) + timedelta(hours=1),
    )
    await jobs.upsert_many(db, [write])
    return rollout_id


@pytest.fixture
async def dispatcher(database_url: str) -> AsyncIterator[Dispatcher]:
    pool = await open_pool(database_url)
    dispatcher = Dispatcher(database_url, pool, max_seconds=25, max_held=10)
    await dispatcher.start()
    await asyncio.wait_for(dispatcher.listening.wait(), 20)
    try:
        yield dispatcher
    finally:
        await dispatcher.stop()
        await pool.close()


async def test_a_notice_wakes_the_held_polls_with_a_job_in_that_rollout_only(
    dispatcher: Dispatcher, db: asyncpg.Connection, settings: ApiSettings
) -> None:
    with (
        dispatcher.hold(_held_request(), _call("web-1")) as with_job,
        dispatcher.hold(_held_request(), _call("web-2")) as without,
    ):
        woken = asyncio.create_task(with_job.woken())
        idle = asyncio.create_task(without.woken())
        rollout_id = await _open_job(db, settings, "web-1")
        await polls.announce(db, rollout_id)  # as the worker's write does, at its commit

        assert await asyncio.wait_for(woken, 30) is True  # a hold running out is False
        await db.fetchval("SELECT 1")  # a round trip: time for a wrong wake to show
        assert not idle.done()
        idle.cancel()


async def test_a_lost_listening_connection_comes_back_and_wakes_polls_with_jobs(
    dispatcher: Dispatcher, db: asyncpg.Connection, settings: ApiSettings
) -> None:
    """A job written while no one listened (its notice lost) is found when the listener is
    back, as after a PostgreSQL restart."""
    with dispatcher.hold(_held_request(), _call("web-1")) as hold:
        woken = asyncio.create_task(hold.woken())
        await _open_job(db, settings, "web-1")  # no notice at all
        connects = _sample("rollout_dispatch_listener_connects_total")
        terminated = await db.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = $1 AND datname = current_database()",
            LISTENER_APPLICATION_NAME,
        )
        assert terminated == 1

        assert await asyncio.wait_for(woken, 30) is True
        assert _sample("rollout_dispatch_listener_connects_total") == connects + 1


# --- end to end: the worker's write wakes the poll ------------------------------------------


async def _report(http: httpx.AsyncClient, instance_id: str, job_id: str, status: str) -> None:
    body = body_for(instance_id, jobId=job_id, status=status, step="health", message=None)
    answer = await post_signed(http, "/api/updates/report", body, TOKEN)
    assert answer.status_code == 200, answer.text


async def test_held_polls_get_each_batch_as_it_is_released(
    dev_settings: ApiSettings, dev_worker: object, db: asyncpg.Connection
) -> None:
    """Two hosts, one per batch, each polling with a hold: creating the rollout, advancing it
    and resuming it after a pause answer the held poll with its job; a hold ending finds
    nothing (null), so a job in the answer means the release woke it."""
    settings = dev_settings.model_copy(update={"control_plane_agent_token": SecretStr(TOKEN)})
    token = settings.control_plane_admin_token.get_secret_value()
    async with (
        _serve(settings) as http,
        httpx.AsyncClient(
            base_url=http.base_url, headers={"x-cp-admin-token": token}, timeout=60
        ) as admin,
    ):
        for host in ("web-1", "web-2"):
            assert (await _poll(http, host))[1] is None  # registers it, below 1.4.0
        release_id = await seed_release(db, settings, version="1.4.0")
        held = _sample("rollout_held_polls")

        async def handed_out_while_held(host: str, action: Callable[[], Awaitable[None]]) -> dict:
            poll = asyncio.create_task(_poll(http, host, wait="25"))
            await eventually(lambda: _held_polls(held + 1))
            started = time.monotonic()
            await action()
            acknowledged = time.monotonic() - started
            answer, job = await poll
            latency = time.monotonic() - started
            print(
                f"held poll of {host}: job handed out {latency * 1000:.0f} ms after the action"
                f" started (the action was acknowledged after {acknowledged * 1000:.0f} ms)"
            )
            assert job is not None, f"the hold ended with nothing: {answer.text}"
            return job

        rollout: dict = {}

        async def create() -> None:
            body = {"manifestId": release_id, "channel": "stable", "batchSize": 1}
            created = await admin.post("/api/rollouts", json=body)
            assert created.status_code == 201, created.text
            rollout.update(created.json())

        first = await handed_out_while_held("web-1", create)
        assert first["rolloutId"] == rollout["id"]
        await _report(http, "web-1", first["id"], "succeeded")
        await rollout_where(admin, rollout["id"], lambda r: r["status"] == "awaiting_advance")

        async def advance() -> None:
            advanced = await admin.post(f"/api/rollouts/{rollout['id']}/advance")
            assert advanced.status_code == 200, advanced.text

        second = await handed_out_while_held("web-2", advance)
        assert second["rolloutId"] == rollout["id"] and second["id"] != first["id"]

        # A pause withholds the job from held polls too; the resume hands it to the held one.
        paused = await admin.post(f"/api/rollouts/{rollout['id']}/pause", json={})
        assert paused.status_code == 200, paused.text
        assert (await _poll(http, "web-2"))[1] is None

        async def resume() -> None:
            resumed = await admin.post(f"/api/rollouts/{rollout['id']}/resume")
            assert resumed.status_code == 200, resumed.text

        assert (await handed_out_while_held("web-2", resume))["id"] == second["id"]


async def test_held_polls_woken_by_one_release_look_again_together_with_their_manifests(
    fleet_api: httpx.AsyncClient, db: asyncpg.Connection, settings: ApiSettings
) -> None:
    """A batch released to a fleet of held polls wakes them all at once: they look again in one
    statement, not one each (a thousand held polls were two thousand queries through a pool of
    ten, and the last of them waited seconds), and each job carries its release's manifest, read
    by that same statement."""
    hosts = [f"web-{k}" for k in range(1, 9)]
    for host in hosts:
        assert (await _poll(fleet_api, host))[1] is None  # registers it
    spec = await seed_running_rollout(db, settings, batch_size=len(hosts))
    held = _sample("rollout_held_polls")
    waiting = [asyncio.create_task(_poll(fleet_api, host, wait="25")) for host in hosts]
    await eventually(lambda: _held_polls(held + len(hosts)))
    looks = _sample("rollout_held_poll_recheck_batch_size_count")
    async with db.transaction():  # as the worker releases a batch: its rows, then the notice
        await write_pending_jobs(db, spec.id, hosts)
        await polls.announce(db, spec.id)

    async with asyncio.timeout(20):  # below the 25 s of a hold: the release woke them
        answered = await asyncio.gather(*waiting)
    stored = await releases.get(db, spec.manifest_id)
    assert stored is not None
    for host, (answer, job) in zip(hosts, answered, strict=True):
        assert job is not None and job["id"] == f"j-{host}", answer.text
        assert job["manifest"] == stored.manifest().as_document()
    assert _sample("rollout_held_poll_recheck_batch_size_count") - looks == 1
