"""The dev server `rollout dev` starts: persisted history, search attributes registered."""

import asyncio
from pathlib import Path

import pytest
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client

from devstack.ports import free_port
from devstack.temporal import TemporalDevServer
from workflows.search_attributes import ALL_KEYS

# Starts a Temporal dev server (tests/tiers.py).
pytestmark = pytest.mark.servers


async def test_dev_server_registers_the_rollout_search_attributes(tmp_path: Path) -> None:
    server = TemporalDevServer(tmp_path / "temporal", free_port(), free_port())
    process = await asyncio.create_subprocess_exec(
        *server.argv(), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        await server.wait_ready()
        client = await Client.connect(server.address)
        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace="default")
        )
        assert {key.name for key in ALL_KEYS} <= set(listed.custom_attributes)
        assert (tmp_path / "temporal" / "temporal.db").exists()
    finally:
        process.terminate()
        await process.wait()
