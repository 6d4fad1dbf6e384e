"""Calls on rollout workflows, for the API's services, benchmarks and tests: start, view, act.

Every call has a deadline: the API must answer (from its read model) when Temporal or the
worker is down, instead of hanging. Temporal's errors become the two a caller acts on.
"""

import asyncio
from collections.abc import Awaitable, Sequence
from datetime import timedelta
from typing import TypeVar

from temporalio.client import (
    Client,
    RPCTimeoutOrCancelledError,
    WithStartWorkflowOperation,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from domain.rollouts import RolloutSpec, rollout_workflow_id
from workflows.rollout import RolloutWorkflow
from workflows.rollout_models import (
    AbortInput,
    ActionInput,
    ActionResult,
    AdvanceInput,
    FreezeInput,
    HandedOutJob,
    JobForInstanceQuery,
    JobReportBatchSignal,
    JobReportSignal,
    PauseInput,
    ResumeInput,
    RetryInput,
    RolloutInput,
    RolloutView,
    ThawInput,
    WaitStartedInput,
)
from workflows.search_attributes import start_attributes, start_summary

ACTIONS = {
    "advance": (RolloutWorkflow.advance, AdvanceInput),
    "pause": (RolloutWorkflow.pause, PauseInput),
    "resume": (RolloutWorkflow.resume, ResumeInput),
    "retry": (RolloutWorkflow.retry, RetryInput),
    "abort": (RolloutWorkflow.abort, AbortInput),
    "freeze": (RolloutWorkflow.freeze, FreezeInput),
    "thaw": (RolloutWorkflow.thaw, ThawInput),
}


class RolloutUnavailable(Exception):
    """Temporal, or a worker for the rollout's task queue, did not answer in time."""


class RolloutGone(Exception):
    """Temporal has no such workflow (never started, or removed by retention)."""


class ActionRefused(Exception):
    """The workflow refused the action now; the message is its reason."""


T = TypeVar("T")


async def _bounded(call: Awaitable[T], timeout: float) -> T:
    try:
        return await asyncio.wait_for(call, timeout)
    except (TimeoutError, RPCTimeoutOrCancelledError) as exc:
        raise RolloutUnavailable(f"Temporal did not answer within {timeout:g}s") from exc
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise RolloutGone(exc.message) from exc
        raise RolloutUnavailable(f"Temporal: {exc.message}") from exc
    except (WorkflowQueryFailedError, WorkflowQueryRejectedError) as exc:
        raise RolloutUnavailable(f"the rollout workflow could not answer: {exc}") from exc
    except RuntimeError as exc:
        # A lazy client's first call raises this plain error when the server cannot be reached.
        if str(exc).startswith("Failed client connect"):
            raise RolloutUnavailable(f"Temporal is unreachable: {exc}") from exc
        raise


async def start_rollout(
    client: Client, spec: RolloutSpec, *, task_queue: str, timeout: float
) -> ActionResult:
    """Start `rollout-<id>` and answer once batch 1 is handed out (or there was nothing to do)."""
    start = WithStartWorkflowOperation(
        RolloutWorkflow.run,
        RolloutInput(spec=spec),
        id=rollout_workflow_id(spec.id),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        search_attributes=start_attributes(spec),
        static_summary=start_summary(spec),
    )
    return await _bounded(
        client.execute_update_with_start_workflow(
            # The SDK's stubs take a sync handler's type; an async update handler is fine here.
            RolloutWorkflow.wait_started,  # type: ignore[arg-type]
            WaitStartedInput(),
            start_workflow_operation=start,
            rpc_timeout=timedelta(seconds=timeout),
        ),
        timeout,
    )


async def live_view(client: Client, rollout_id: str, *, timeout: float) -> RolloutView:
    handle = client.get_workflow_handle(rollout_workflow_id(rollout_id))
    return await _bounded(
        handle.query(RolloutWorkflow.view, rpc_timeout=timedelta(seconds=timeout)), timeout
    )


async def workflow_exists(client: Client, rollout_id: str, *, timeout: float) -> bool:
    handle = client.get_workflow_handle(rollout_workflow_id(rollout_id))
    try:
        await _bounded(handle.describe(rpc_timeout=timedelta(seconds=timeout)), timeout)
    except (RolloutUnavailable, RolloutGone):
        return False
    return True


async def run_action(
    client: Client, rollout_id: str, action: str, input: ActionInput, *, timeout: float
) -> ActionResult:
    """Run an admin action; ActionRefused carries the workflow's reason when it does not apply."""
    update, _ = ACTIONS[action]
    handle = client.get_workflow_handle(rollout_workflow_id(rollout_id))
    try:
        return await _bounded(
            # ACTIONS mixes update types, which the SDK's overloads cannot express.
            handle.execute_update(  # type: ignore[call-overload]
                update, input, rpc_timeout=timedelta(seconds=timeout)
            ),
            timeout,
        )
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        if isinstance(cause, ApplicationError) and cause.type == "RolloutActionRefused":
            raise ActionRefused(cause.message) from None
        raise


def action_input(
    action: str,
    actor: str,
    reason: str | None = None,
    *,
    force: bool = False,
    by_revert: bool = False,
) -> ActionInput:
    _, model = ACTIONS[action]
    if model is AdvanceInput:
        return AdvanceInput(actor=actor, force=force)
    if model is FreezeInput:
        return FreezeInput(actor=actor, reason=reason or "no reason given")
    if model is AbortInput:
        return AbortInput(actor=actor, reason=reason, by_revert=by_revert)
    if model is PauseInput:
        return PauseInput(actor=actor, reason=reason)
    return model(actor=actor)


async def report_job(
    client: Client, rollout_id: str, report: JobReportSignal, *, timeout: float
) -> None:
    """Deliver an agent's report to its rollout (the workflow ignores repeats)."""
    handle = client.get_workflow_handle(rollout_workflow_id(rollout_id))
    await _bounded(
        handle.signal(RolloutWorkflow.job_report, report, rpc_timeout=timedelta(seconds=timeout)),
        timeout,
    )


async def report_jobs(
    client: Client, rollout_id: str, reports: Sequence[JobReportSignal], *, timeout: float
) -> None:
    """Deliver several reports to one rollout in one signal (the workflow takes them in order)."""
    handle = client.get_workflow_handle(rollout_workflow_id(rollout_id))
    batch = JobReportBatchSignal(reports=list(reports))
    await _bounded(
        handle.signal(
            RolloutWorkflow.job_report_batch, batch, rpc_timeout=timedelta(seconds=timeout)
        ),
        timeout,
    )


async def job_for_instance(
    client: Client, rollout_id: str, instance_id: str, *, timeout: float
) -> HandedOutJob | None:
    handle = client.get_workflow_handle(rollout_workflow_id(rollout_id))
    result = await _bounded(
        handle.query(
            RolloutWorkflow.job_for_instance,
            JobForInstanceQuery(instance_id=instance_id),
            rpc_timeout=timedelta(seconds=timeout),
        ),
        timeout,
    )
    return result.job
