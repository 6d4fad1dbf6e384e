"""One job as an operator inspects it: the stored job and its per-step timeline."""

import asyncpg
from pydantic import BaseModel

from services.errors import NotFound
from services.timeline import TimelineStep, job_timeline
from store import job_reports, jobs
from store.jobs import Job


class JobDetail(BaseModel):
    job: Job
    timeline: list[TimelineStep]


async def detail(pool: asyncpg.Pool, job_id: str) -> JobDetail:
    job = await jobs.get(pool, job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    reports = await job_reports.for_jobs(pool, [job_id])
    return JobDetail(job=job, timeline=job_timeline(job.status, reports.get(job_id, [])))
