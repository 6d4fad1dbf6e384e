"""The worker process: runs rollout workflows and their activities until SIGTERM/SIGINT.

Beside the worker runs the reconciler (worker/reconciler.py), which ends rollouts whose workflow
was closed from outside. On a signal it stops polling, lets running activities and workflow
tasks finish (within the graceful timeout) and exits 0; anything unfinished is picked up by the
next worker.
"""

import asyncio
import contextlib
import logging
import signal
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker

from activities.gates import GateActivities
from activities.reverts import RevertActivities
from activities.rollouts import RolloutActivities
from server.settings import Settings
from store.pool import open_pool
from temporal_client.connect import connect_temporal
from worker.metrics import metrics_runtime
from worker.reconciler import reconcile_forever
from workflows.rollout import RolloutWorkflow

GRACEFUL_SHUTDOWN = timedelta(seconds=20)
# A workflow task waits this long for the worker that last ran the workflow (its sticky queue)
# before any worker may take it. A worker killed (kill -9, OOM) cannot tell Temporal it left:
# the SDK's 10 s default was most of what a killed worker cost a rollout (16 s of 6 s heartbeat
# and retry); a live worker takes its sticky tasks in milliseconds.
STICKY_TIMEOUT = timedelta(seconds=3)
log = logging.getLogger("rollout.worker")


def build_worker(client: Client, settings: Settings, activities: RolloutActivities) -> Worker:
    """The worker of `settings.temporal_task_queue`, the single place that lists what it runs."""
    gates = GateActivities(settings)
    reverts = RevertActivities(activities.pool, stale_after_seconds=activities.stale_after_seconds)
    return Worker(
        client,
        task_queue=settings.temporal_task_queue,
        workflows=[RolloutWorkflow],
        activities=[
            activities.snapshot_targets,
            activities.batch_targets,
            activities.late_targets,
            activities.record_progress,
            activities.reported_steps,
            gates.watch_gates,
            reverts.prepare_auto_revert,
        ],
        graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
        sticky_queue_schedule_to_start_timeout=STICKY_TIMEOUT,
    )


async def run_worker(settings: Settings) -> None:
    pool = await open_pool(
        settings.database_url,
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
    )
    try:
        client = await connect_temporal(settings, runtime=metrics_runtime(settings))
        activities = RolloutActivities(
            pool, stale_after_seconds=settings.instance_stale_after_seconds
        )
        worker = build_worker(client, settings, activities)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        reconciler = asyncio.create_task(
            reconcile_forever(client, pool, settings.reconcile_interval_seconds)
        )
        async with worker:
            log.info(
                "worker polling task queue %s%s",
                settings.temporal_task_queue,
                f"; metrics on http://{settings.worker_metrics_address}/metrics"
                if settings.worker_metrics_address
                else "",
            )
            await stop.wait()
            log.info("shutting down: finishing running tasks")
            reconciler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reconciler
        log.info("worker stopped")
    finally:
        await pool.close()
