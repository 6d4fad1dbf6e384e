"""Shared fixtures: a real PostgreSQL per session, a fresh database per test, a real HTTP API.

Each test gets its own database cloned from a migrated template (fast, and no test sees
another's rows). `DATABASE_URL`, when set, points the session at an existing server instead.
"""

import asyncio
import os
import secrets
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import uvicorn

from api import connections
from api.app import create_app
from cli.api import KEEP_ALIVE_SECONDS
from devstack.ports import free_port
from devstack.postgres import EmbeddedPostgres
from server.settings import ApiSettings
from store.migrate import apply_migrations
from store.pool import connect

TEMPLATE_DB = "rollout_test_template"


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """DSN of the server's maintenance database.

    Its data lives outside pytest's basetemp: a second pytest session on the machine prunes old
    basetemp folders, which would pull the data directory from under a running server.
    """
    external = os.environ.get("DATABASE_URL")
    if external:
        yield external
        return
    with tempfile.TemporaryDirectory(prefix="rollout-test-pg-") as folder:
        server = EmbeddedPostgres(Path(folder) / "data", free_port(), durable=False)
        with (Path(folder) / "postgres.log").open("ab") as log:
            server.start(stdout=log.fileno())
            try:
                yield server.dsn
            finally:
                server.stop()


@pytest.fixture(scope="session")
async def template_database(postgres_server: str) -> str:
    admin = await asyncpg.connect(postgres_server)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}"')
        await admin.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(_with_database(postgres_server, TEMPLATE_DB))
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    return TEMPLATE_DB


@pytest.fixture
async def database_url(postgres_server: str, template_database: str) -> AsyncIterator[str]:
    """A fresh, migrated database of this test's own."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(postgres_server)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    finally:
        await admin.close()
    yield _with_database(postgres_server, name)
    admin = await asyncpg.connect(postgres_server)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def settings(database_url: str) -> ApiSettings:
    return ApiSettings(
        database_url=database_url,
        control_plane_admin_token=secrets.token_hex(16),
        control_plane_release_signing_secret=secrets.token_hex(16),
        control_plane_agent_token=None,
    )


class LiveServer:
    """uvicorn serving the app on a free loopback port, in this test's event loop."""

    def __init__(self, app: object, port: int, *, limit_concurrency: int | None = None) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=port,
                log_level="warning",
                access_log=False,  # as `rollout api`: the app writes the access lines
                lifespan="on",
                timeout_keep_alive=KEEP_ALIVE_SECONDS,  # as `rollout api` serves agents
                http=connections.PROTOCOL,  # as `rollout api`: its limits on connections
                limit_concurrency=limit_concurrency,
            )
        )
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> "LiveServer":
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self.task.done():
                self.task.result()
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        assert self.task is not None
        await self.task


@pytest.fixture
async def api(settings: ApiSettings) -> AsyncIterator[LiveServer]:
    async with LiveServer(create_app(settings), free_port()) as server:
        yield server


@pytest.fixture
async def admin_client(api: LiveServer, settings: ApiSettings) -> AsyncIterator[httpx.AsyncClient]:
    token = settings.control_plane_admin_token.get_secret_value()
    async with httpx.AsyncClient(
        base_url=api.url, headers={"x-cp-admin-token": token}, timeout=30
    ) as client:
        yield client


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


# Fixture modules of other parts of the system (Temporal servers, agent processes), and the
# marking of the tests that start servers (tests/tiers.py).
pytest_plugins = [
    "tests.fixtures_temporal",
    "tests.fixtures_agents",
    "tests.fixtures_fleet",
    "tests.tiers",
]
