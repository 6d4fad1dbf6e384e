"""job_reports: every agent report as received (append-only)."""

from datetime import datetime

import asyncpg
from pydantic import BaseModel

from contract.wire import ReportRequest


class StoredReport(BaseModel):
    id: int
    job_id: str
    instance_id: str
    status: str
    step: str | None
    message: str | None
    received_at: datetime


async def append(conn: asyncpg.Connection | asyncpg.Pool, report: ReportRequest) -> None:
    await conn.execute(
        "INSERT INTO job_reports (job_id, instance_id, status, step, message, nonce)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        report.jobId,
        report.instanceId,
        report.status,
        report.step,
        report.message,
        report.nonce,
    )


async def for_job(conn: asyncpg.Connection | asyncpg.Pool, job_id: str) -> list[StoredReport]:
    rows = await conn.fetch(
        "SELECT id, job_id, instance_id, status, step, message, received_at FROM job_reports"
        " WHERE job_id = $1 ORDER BY id",
        job_id,
    )
    return [StoredReport(**dict(r)) for r in rows]
