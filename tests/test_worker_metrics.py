"""The worker's own Prometheus endpoint (WORKER_METRICS_ADDRESS): the SDK's task latencies and
slots, labelled with the task queue, after the worker ran a rollout workflow."""

import socket
import subprocess
import sys

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from devstack.ports import free_port
from server.settings import ApiSettings
from tests.control_plane_processes import process_env, worker_process
from tests.fixtures_temporal import eventually, seed_instances, seed_release


async def test_worker_exports_sdk_metrics_after_running_a_workflow(
    dev_admin: httpx.AsyncClient, dev_settings: ApiSettings, db: asyncpg.Connection
) -> None:
    address = f"127.0.0.1:{free_port()}"
    env = process_env(dev_settings, WORKER_METRICS_ADDRESS=address)
    async with worker_process(env) as worker, httpx.AsyncClient(timeout=10) as client:
        assert f"metrics on http://{address}/metrics" in worker.log()
        release_id = await seed_release(db, dev_settings)
        await seed_instances(db, ["db-1"])
        created = await dev_admin.post(
            "/api/rollouts", json={"manifestId": release_id, "channel": "stable", "batchSize": 1}
        )
        assert created.status_code == 201, created.text

        async def samples() -> dict[str, set[str]]:
            """metric name -> task queues it has samples for, once a workflow task is counted."""
            text = (await client.get(f"http://{address}/metrics")).text
            found: dict[str, set[str]] = {}
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    found.setdefault(sample.name, set()).add(sample.labels.get("task_queue", ""))
            return (
                found if "temporal_workflow_task_schedule_to_start_latency_count" in found else {}
            )

        found = await eventually(samples)
        queue = dev_settings.temporal_task_queue
        assert queue in found["temporal_workflow_task_schedule_to_start_latency_count"]
        assert queue in found["temporal_worker_task_slots_available"]
        assert queue in found["temporal_activity_execution_latency_count"]
        assert "temporal_sticky_cache_size" in found


def test_a_metrics_address_in_use_stops_the_worker_with_one_line(
    dev_settings: ApiSettings,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = subprocess.run(
            [sys.executable, "-m", "cli.main", "worker"],
            env=process_env(dev_settings, WORKER_METRICS_ADDRESS=address),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 2, result.stderr
    assert f"rollout worker: WORKER_METRICS_ADDRESS {address}" in result.stderr
    assert "Address already in use" in result.stderr and "Traceback" not in result.stderr
