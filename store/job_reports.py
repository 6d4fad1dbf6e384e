"""job_reports: every agent report as received (append-only). Appended together with the
job's move, in one statement, by store.jobs.apply_report."""

from collections.abc import Sequence
from datetime import datetime

import asyncpg
from pydantic import BaseModel

from contract.wire import ReportStatus, Step


class StoredReport(BaseModel):
    id: int
    job_id: str
    instance_id: str
    status: ReportStatus
    step: Step | None
    message: str | None
    received_at: datetime


async def for_jobs(
    conn: asyncpg.Connection | asyncpg.Pool, job_ids: Sequence[str]
) -> dict[str, list[StoredReport]]:
    """Each job's reports in the order they were acknowledged (jobs with none are left out):
    what a job's timeline is derived from (services/timeline.py)."""
    if not job_ids:
        return {}  # the rollout view asks on every read; most batches have no failure
    rows = await conn.fetch(
        "SELECT id, job_id, instance_id, status, step, message, received_at FROM job_reports"
        " WHERE job_id = ANY($1::text[]) ORDER BY job_id, id",
        list(job_ids),
    )
    reports: dict[str, list[StoredReport]] = {}
    for row in rows:
        reports.setdefault(row["job_id"], []).append(StoredReport.model_validate(dict(row)))
    return reports
