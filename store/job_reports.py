"""job_reports: every agent report as received (append-only)."""

import asyncpg

from contract.wire import ReportRequest


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
