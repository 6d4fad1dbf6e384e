"""Accepting an agent's report (PROTOCOL §5): the order of checks, what reaches the workflow,
and what makes a report durable. api/routers/agent.py only verifies and answers.

A report answered 2xx is stored: the job's row and the append-only job_reports move together
in one statement (one round trip: the report path is on every batch's critical path), after the
workflow heard of it (if it needs to). Anything that fails before then leaves nothing behind,
so the agent's retry is the first report again.
"""

from datetime import datetime

import asyncpg
from pydantic import BaseModel

from contract.wire import TERMINAL_JOB_STATUSES, JobStatus, ReportRequest
from services.errors import Conflict, Forbidden, NotFound, Replayed
from store import jobs
from store.jobs import Job
from temporal_client.report_signals import ReportSignals
from temporal_client.rollouts import RolloutGone
from workflows.rollout_models import JobReportSignal

# Agents retry on 503, so answering fast beats waiting out a slow Temporal. A report queued
# behind a signal in flight to its rollout (temporal_client.report_signals) may wait twice this.
TEMPORAL_TIMEOUT_SECONDS = 5.0


class Accepted(BaseModel):
    job: Job  # as it was before the report
    status: JobStatus  # the job's status now
    duplicate: bool  # the same report again: nothing changed


async def accept(
    pool: asyncpg.Pool,
    signals: ReportSignals,
    report: ReportRequest,
    *,
    nonce_expires_at: datetime,
) -> Accepted:
    """Claims the report's nonce (Replayed), then raises NotFound, Forbidden, Conflict
    (contradicts a settled status) or, when the workflow must hear of it and cannot,
    RolloutUnavailable."""
    fresh, job = await jobs.get_claiming_nonce(
        pool,
        report.jobId,
        instance_id=report.instanceId,
        nonce=report.nonce,
        expires_at=nonce_expires_at,
    )
    if not fresh:
        raise Replayed(f"nonce {report.nonce} already used")
    if job is None:
        raise NotFound(f"job {report.jobId} not found")
    if job.instance_id != report.instanceId:
        raise Forbidden(f"job {report.jobId} belongs to another instance")
    if (job.status, job.step) == (report.status, report.step):
        return Accepted(job=job, status=job.status, duplicate=True)
    settled = job.status in TERMINAL_JOB_STATUSES
    if settled and job.status != report.status:
        raise _contradiction(report, job.status)
    # Only what changes the workflow's decisions is signalled: a job starting or ending. A
    # report agreeing with a settled status (a retry the workflow heard of) still sets the step.
    if not settled and (report.status != "in_progress" or job.status == "pending"):
        await _signal_workflow(signals, report, job.rollout_id)
    status = await jobs.apply_report(pool, report)
    if status != report.status:
        raise _contradiction(report, status)  # settled meanwhile; nothing was stored
    return Accepted(job=job, status=report.status, duplicate=False)


def _contradiction(report: ReportRequest, settled_status: str) -> Conflict:
    return Conflict(
        f"job {report.jobId} is already {settled_status}; a {report.status} report contradicts it"
    )


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
