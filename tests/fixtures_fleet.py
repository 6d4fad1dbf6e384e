"""A live control plane for fleet tests: the API with a fleet token over the dev Temporal
server with a live worker, and helpers to wait on what agents make happen."""

import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from temporalio.worker import Worker

from api.app import create_app
from contract.settings import ApiSettings
from devstack.ports import free_port
from tests.conftest import LiveServer
from tests.fixtures_temporal import eventually

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

    return await eventually(probe, timeout=60)
