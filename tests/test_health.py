"""Liveness answers whatever is down; readiness names what rollouts miss, workers included."""

import asyncpg
import httpx
from temporalio.testing import WorkflowEnvironment

from activities.rollouts import RolloutActivities
from api.app import create_app
from devstack.ports import free_port
from server.settings import ApiSettings
from tests.conftest import LiveServer
from tests.fixtures_temporal import eventually
from worker.main import build_worker


async def test_ready_only_while_a_worker_polls_and_live_even_without_temporal(
    dev_env: WorkflowEnvironment,
    dev_settings: ApiSettings,
    worker_pool: asyncpg.Pool,
) -> None:
    no_temporal = dev_settings.model_copy(update={"temporal_address": f"127.0.0.1:{free_port()}"})
    async with (
        LiveServer(create_app(dev_settings), free_port()) as api,
        LiveServer(create_app(no_temporal), free_port()) as api_without_temporal,
        httpx.AsyncClient(timeout=30) as client,
    ):
        no_worker = await client.get(f"{api.url}/health/ready")
        assert no_worker.status_code == 503
        assert no_worker.json()["checks"]["database"] == "ok"
        assert no_worker.json()["checks"]["temporal"] == "ok"
        assert no_worker.json()["detail"] == (
            f"down: worker not polling task queue {dev_settings.temporal_task_queue!r}"
            " (workflow and activity tasks)"
        )
        # Dependencies are fine: the older /health does not count workers.
        assert (await client.get(f"{api.url}/health")).status_code == 200

        worker = build_worker(dev_env.client, dev_settings, RolloutActivities(worker_pool))
        async with worker:

            async def ready() -> bool:
                return (await client.get(f"{api.url}/health/ready")).status_code == 200

            await eventually(ready)
            answer = (await client.get(f"{api.url}/health/ready")).json()
            assert answer == {
                "status": "ok",
                "checks": {"database": "ok", "temporal": "ok", "worker": "ok"},
            }

        unreachable = await client.get(f"{api_without_temporal.url}/health/ready")
        assert unreachable.status_code == 503
        assert "temporal unreachable" in unreachable.json()["detail"]
        live = await client.get(f"{api_without_temporal.url}/health/live")
        assert live.status_code == 200 and live.json() == {"status": "ok"}
