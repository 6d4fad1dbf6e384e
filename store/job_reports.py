"""job_reports: every agent report as received (append-only). Appended together with the
job's move, in one statement, by store.jobs.apply_report."""

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

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


class Durations(NamedTuple):
    jobs: int  # how many finished jobs the figure is taken from (0: none)
    p90_seconds: float


# The jobs a prediction learns from: the latest that succeeded on the channel.
DURATION_SAMPLE = 1_000


async def durations(conn: asyncpg.Connection | asyncpg.Pool, channel: str) -> Durations:
    """How long the latest jobs that succeeded on `channel` took, first report to last (their
    90th percentile): what a preview predicts a batch's slowest job takes."""
    row = await conn.fetchrow(
        "SELECT count(*) AS jobs, percentile_cont(0.9) WITHIN GROUP (ORDER BY seconds) AS p90"
        " FROM (SELECT extract(epoch FROM max(r.received_at) - min(r.received_at)) AS seconds"
        " FROM update_jobs j JOIN rollouts ro ON ro.id = j.rollout_id"
        " JOIN job_reports r ON r.job_id = j.id"
        " WHERE ro.channel = $1 AND j.status = 'succeeded'"
        " GROUP BY j.id ORDER BY max(r.received_at) DESC LIMIT $2) AS latest",
        channel,
        DURATION_SAMPLE,
    )
    return Durations(row["jobs"], float(row["p90"] or 0.0))
