"""Accepting an agent's report (PROTOCOL §5): the order of checks, what reaches the workflow,
and what makes a report durable. api/routers/agent.py only verifies and answers.

A report answered 2xx is stored: the job's row and the append-only job_reports move together
in one statement (one round trip: the report path is on every batch's critical path), after the
workflow heard of it (if it needs to). Anything that fails before then leaves nothing behind,
so the agent's retry is the first report again.

Once a job's final report is stored its outcome and step are settled for good: the same report
again is a duplicate (200, nothing stored), any other is a contradiction (409). A job stores at
most MAX_PROGRESS_REPORTS_PER_JOB `in_progress` reports (409 past them; its final report is
still taken), so no agent can grow a job's timeline without bound.

A job the control plane ended (CONTROL_PLANE_ENDS: cancelled, timed_out, unreachable) may still
have run on its host. Every refusal says the job's status (`jobStatus`), so its agent stops and
rolls back; the final report it then sends is still refused (the decision stands), and is
recorded as the job's `hostOutcome`, once, with the step, in job_reports for the timeline.
Both are decided from the job as the first round trip read it: the common case stays at two.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

import asyncpg
from pydantic import BaseModel

from contract.wire import (
    CONTROL_PLANE_ENDS,
    MAX_PROGRESS_REPORTS_PER_JOB,
    TERMINAL_JOB_STATUSES,
    JobStatus,
    ReportRequest,
)
from services.errors import Conflict, Forbidden, NotFound, Replayed
from store import jobs
from store.jobs import Job, ReportedJob
from store.pool import AGENT_STATEMENT_SECONDS
from temporal_client.report_signals import ReportSignals
from temporal_client.rollouts import RolloutGone
from workflows.rollout_models import JobReportSignal

T = TypeVar("T")

# Agents retry on 503, so answering fast beats waiting out a slow Temporal. A report queued
# behind a signal in flight to its rollout (temporal_client.report_signals) may wait twice this.
TEMPORAL_TIMEOUT_SECONDS = 5.0
log = logging.getLogger(__name__)


class Accepted(BaseModel):
    job: Job  # as it was before the report
    status: JobStatus  # the job's status now
    duplicate: bool  # the same report again: nothing changed


# Claims a report's nonce and reads its job, and stores it when it is its started job's next
# step, in a statement it may share with others (store.jobs.claim_reports, api.agents.batchers).
ClaimReport = Callable[[jobs.SentReport], Awaitable[jobs.NonceAndJob]]


async def accept(
    pool: asyncpg.Pool,
    signals: ReportSignals,
    claim_report: ClaimReport,
    report: ReportRequest,
    *,
    nonce_expires_at: datetime,
) -> Accepted:
    """Claims the report's nonce (Replayed), then raises NotFound, Forbidden, Conflict
    (contradicts a settled job, or an `in_progress` report past the bound) or, when the workflow
    must hear of it and cannot, RolloutUnavailable."""
    # Most are a started job's next step, stored by this first statement already.
    fresh, job, stored = await _bounded(claim_report(jobs.SentReport(report, nonce_expires_at)))
    if not fresh:
        raise Replayed(f"nonce {report.nonce} already used")
    if job is None:
        raise NotFound(f"job {report.jobId} not found")
    if job.instance_id != report.instanceId:
        raise Forbidden(f"job {report.jobId} belongs to another instance")
    if stored:
        return Accepted(job=job, status=report.status, duplicate=False)
    if job.status in CONTROL_PLANE_ENDS and report.status != "in_progress":
        raise await _host_outcome(pool, job, report)  # the decision stands; the host's end too
    if _is_duplicate(job, report):
        return Accepted(job=job, status=job.status, duplicate=True)
    # Only what changes the workflow's decisions is signalled: a job starting or ending. A
    # report agreeing with a settled status (a retry the workflow heard of) still sets the step.
    if job.status not in TERMINAL_JOB_STATUSES and (
        report.status != "in_progress" or job.status == "pending"
    ):
        await _signal_workflow(signals, report, job.rollout_id)
    latest = job
    # A second attempt only when the row changed between the statement's read and its write
    # (the job settled meanwhile): the next statement reads the change and says why.
    for _ in range(2):
        applied = await _bounded(jobs.apply_report(pool, report))
        if applied.stored:
            return Accepted(job=job, status=report.status, duplicate=False)
        latest = applied.job
        if latest.status in CONTROL_PLANE_ENDS and report.status != "in_progress":
            raise await _host_outcome(pool, latest, report)  # ended by its deadline meanwhile
        if _is_duplicate(latest, report):
            return Accepted(job=job, status=latest.status, duplicate=True)
    raise _contradiction(report, latest)


def _is_duplicate(job: ReportedJob, report: ReportRequest) -> bool:
    """True: the job already says what the report says (nothing to store); False: the job takes
    the report. Raises Conflict when it never will."""
    same = (job.status, job.step) == (report.status, report.step)
    if job.final_reported:
        if same:
            return True
        raise _contradiction(report, job)  # settled by its final report: for good
    if job.status in TERMINAL_JOB_STATUSES:
        if job.status != report.status:
            raise _contradiction(report, job)
        return False  # its first final report, after the workflow wrote the end: sets the step
    if report.status == "in_progress":
        if same:
            return True
        if job.reports_stored >= MAX_PROGRESS_REPORTS_PER_JOB:
            raise Conflict(
                f"job {report.jobId} has {job.reports_stored} in_progress reports stored, the"
                f" most one job keeps ({MAX_PROGRESS_REPORTS_PER_JOB}); only its final report is"
                " taken now",
                fields={"jobStatus": job.status},
            )
    return False


def _sent(report: ReportRequest) -> str:
    return f"{report.status} report at {report.step}" if report.step else f"{report.status} report"


async def _bounded(statement: Awaitable[T]) -> T:
    """One statement, answered 503 (a TimeoutError) when PostgreSQL stalls (store.pool)."""
    async with asyncio.timeout(AGENT_STATEMENT_SECONDS):
        return await statement


def _contradiction(report: ReportRequest, job: ReportedJob) -> Conflict:
    settled = f"{job.status} at {job.step}" if job.final_reported and job.step else job.status
    if job.host_outcome is not None:
        settled += f" (its host's outcome: {job.host_outcome} at {job.host_step})"
    return Conflict(
        f"job {report.jobId} is already {settled}; a {_sent(report)} contradicts it",
        fields={"jobStatus": job.status, **_host_fields(job.host_outcome, job.host_step)},
    )


def _host_fields(outcome: str | None, step: str | None) -> dict[str, str | None]:
    return {"hostOutcome": outcome, "hostStep": step} if outcome is not None else {}


async def _host_outcome(pool: asyncpg.Pool, job: ReportedJob, report: ReportRequest) -> Conflict:
    """The refusal of a final report for a job the control plane ended, which records it as the
    host's outcome unless the job has one already (then it changes nothing)."""
    if job.host_outcome is None and await jobs.record_host_outcome(pool, report):
        log.info(
            "host outcome recorded",
            extra={
                "instance_id": report.instanceId,
                "job_id": report.jobId,
                "rollout_id": job.rollout_id,
                "status": report.status,
                "step": report.step,
            },
        )
        return Conflict(
            f"job {report.jobId} is already {job.status}; the {_sent(report)} is recorded as"
            " the host's outcome",
            fields={"jobStatus": job.status, **_host_fields(report.status, report.step)},
        )
    if job.host_outcome is None:  # another report recorded one between the two statements
        job = await jobs.get_reported(pool, report.jobId) or job
    return _contradiction(report, job)


async def _signal_workflow(signals: ReportSignals, report: ReportRequest, rollout_id: str) -> None:
    signal = JobReportSignal(
        job_id=report.jobId,
        instance_id=report.instanceId,
        status=report.status,
        step=report.step,
        message=report.message,
    )
    try:
        await signals.deliver(rollout_id, signal)
    except RolloutGone:
        return  # a finished rollout takes no more decisions; the read model still records it
