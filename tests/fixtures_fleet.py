"""A live control plane for fleet tests: the API with a fleet token over the dev Temporal
server with a live worker, and helpers to wait on what agents make happen."""

import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from pydantic import SecretStr
from temporalio.worker import Worker

from api.app import create_app
from devstack.ports import free_port
from domain.jobs import JobWrite
from domain.rollouts import RolloutSpec
from server.settings import ApiSettings
from store import jobs, rollouts
from tests.conftest import LiveServer
from tests.fixtures_temporal import eventually, seed_release

FLEET_TOKEN = secrets.token_hex(16)


@pytest.fixture
async def plane(dev_settings: ApiSettings, dev_worker: Worker) -> AsyncIterator[LiveServer]:
    """The API with a fleet token, on the dev server with a live worker."""
    configured = dev_settings.model_copy(
        update={"control_plane_agent_token": SecretStr(FLEET_TOKEN)}
    )
    async with LiveServer(create_app(configured), free_port()) as server:
        yield server


@pytest.fixture
async def admin(plane: LiveServer, settings: ApiSettings) -> AsyncIterator[httpx.AsyncClient]:
    token = settings.control_plane_admin_token.get_secret_value()
    async with httpx.AsyncClient(
        base_url=plane.url, headers={"x-cp-admin-token": token}, timeout=60
    ) as client:
        yield client


async def registered(admin: httpx.AsyncClient, count: int) -> None:
    async def probe() -> bool:
        return len((await admin.get("/api/instances")).json()) == count

    await eventually(probe)


async def rollout_where(admin: httpx.AsyncClient, rollout_id: str, check: Any) -> dict:
    async def probe() -> dict | None:
        body = (await admin.get(f"/api/rollouts/{rollout_id}")).json()
        return body if check(body) else None

    return await eventually(probe, timeout=120)


async def seed_pending_jobs(
    db: asyncpg.Connection, settings: ApiSettings, instance_ids: list[str]
) -> str:
    """A running rollout row with pending jobs, as if a workflow (not running here) wrote them.

    For what the API does from its read model alone. Returns the rollout id.
    """
    spec = await seed_running_rollout(db, settings, batch_size=len(instance_ids))
    await write_pending_jobs(db, spec.id, instance_ids)
    return spec.id


async def seed_running_rollout(
    db: asyncpg.Connection, settings: ApiSettings, *, batch_size: int
) -> RolloutSpec:
    """A running rollout row of a new release 1.4.0, with no job yet."""
    release_id = await seed_release(db, settings, version="1.4.0")
    spec = RolloutSpec(
        id="r1",
        manifest_id=release_id,
        version="1.4.0",
        channel="stable",
        batch_size=batch_size,
        created_by="admin",
    )
    await rollouts.insert(db, spec)
    return spec


async def write_pending_jobs(
    db: asyncpg.Connection, rollout_id: str, instance_ids: list[str]
) -> None:
    """A pending job `j-<instance>` of the rollout for each instance, as the worker writes them."""
    deadline = datetime.now(UTC) + timedelta(hours=1)
    await jobs.upsert_many(
        db,
        [
            JobWrite(
                id=f"j-{name}",
                rollout_id=rollout_id,
                instance_id=name,
                batch=1,
                attempt=1,
                status="pending",
                deadline=deadline,
            )
            for name in instance_ids
        ],
    )
