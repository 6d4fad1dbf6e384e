"""Health for each audience, and build identity.

- `/health/live`: the process answers. For restarts and load balancers: it never fails because a
  dependency is down, so agents keep reaching the API (and hear its own 503s) during an outage.
- `/health/ready`: PostgreSQL, Temporal and a worker polling the task queue are all there, so
  rollouts can progress. For monitoring, deploy gates and `rollout dev` users.
- `/health`: PostgreSQL and Temporal only, for monitors that watch the dependencies and not
  the worker.
"""

import asyncio
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from api.deps import PoolDep, SettingsDep, TemporalDep
from runtime.build import git_sha, package_version

router = APIRouter(tags=["system"])

_CHECK_TIMEOUT_SECONDS = 3.0
# A live idle worker starts a new long poll at least once a minute (the server ends each after
# one); Temporal itself lists a poller for 5 minutes after its last poll.
POLLER_FRESH = timedelta(minutes=2)
# The worker runs workflows and activities: both kinds of task need a poller.
_TASK_TYPES = {
    "workflow": TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    "activity": TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
}


@router.get("/health/live")
async def live() -> dict[str, str]:
    """The process serves requests; nothing else is checked."""
    return {"status": "ok"}


@router.get("/health/ready")
async def ready(pool: PoolDep, temporal: TemporalDep, settings: SettingsDep) -> JSONResponse:
    """503 naming each missing part (database, temporal, worker)."""
    return _answer(
        await _checks(
            database=pool.fetchval("SELECT 1"),
            temporal=temporal.service_client.check_health(),
            worker=_worker_polls(temporal, settings.temporal_task_queue),
        )
    )


@router.get("/health")
async def health(pool: PoolDep, temporal: TemporalDep) -> JSONResponse:
    """503 naming each dependency that is down, so an operator knows where to look."""
    return _answer(
        await _checks(
            database=pool.fetchval("SELECT 1"),
            temporal=temporal.service_client.check_health(),
        )
    )


async def _checks(**probes: Awaitable[object]) -> dict[str, str]:
    """Concurrently, so a dependency that hangs costs one timeout, not one per check."""
    states = await asyncio.gather(*(_check(probe) for probe in probes.values()))
    return dict(zip(probes, states, strict=True))


def _answer(checks: dict[str, str]) -> JSONResponse:
    down = {name: state for name, state in checks.items() if state != "ok"}
    if down:
        detail = "down: " + ", ".join(f"{name} {state}" for name, state in down.items())
        return JSONResponse(
            status_code=503, content={"status": "unavailable", "detail": detail, "checks": checks}
        )
    return JSONResponse({"status": "ok", "checks": checks})


async def _check(probe: Awaitable[object]) -> str:
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT_SECONDS):
            answer = await probe
    except Exception as exc:
        return f"unreachable ({type(exc).__name__})"
    if isinstance(answer, str):
        return answer
    return "ok" if answer is not False else "not serving"


async def _worker_polls(temporal: Client, task_queue: str) -> str:
    """ "ok" when a worker polled the task queue for each task type lately, else what is missing."""
    since = datetime.now(UTC) - POLLER_FRESH
    missing = []
    for name, task_type in _TASK_TYPES.items():
        answer = await temporal.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=temporal.namespace,
                task_queue=TaskQueue(name=task_queue),
                task_queue_type=task_type,
            )
        )
        if not any(p.last_access_time.ToDatetime(UTC) >= since for p in answer.pollers):
            missing.append(name)
    if missing:
        return f"not polling task queue {task_queue!r} ({' and '.join(missing)} tasks)"
    return "ok"


@router.get("/version")
async def version() -> dict[str, str | None]:
    return {"version": package_version(), "gitSha": git_sha()}
