"""Prometheus metrics of the API process, served at /metrics."""

import asyncpg
from prometheus_client import Counter, Gauge, Histogram

from store import jobs, rollouts

AUTH_FAILURES = Counter(
    "rollout_agent_auth_failures_total", "Agent requests refused with 401, by reason", ["reason"]
)
POLLS = Counter("rollout_agent_polls_total", "Agent polls answered, by outcome", ["outcome"])
REPORTS = Counter("rollout_agent_reports_total", "Agent reports answered, by outcome", ["outcome"])
REQUEST_SECONDS = Histogram(
    "rollout_http_request_duration_seconds",
    "HTTP request latency by route template and method",
    ["route", "method", "status"],
)
HANDOUT_QUERIES = Counter(
    "rollout_handout_queries_total",
    "Workflow queries made to answer agent polls (one serves a whole batch's polls)",
)
JOBS = Gauge("rollout_jobs", "Update jobs in the read model, by status", ["status"])
ROLLOUTS = Gauge("rollout_rollouts", "Rollouts in the read model, by status", ["status"])


async def refresh_fleet_gauges(pool: asyncpg.Pool) -> None:
    """Gauges of the whole fleet, read at scrape time so every API process reports the same."""
    for gauge, counts in (
        (JOBS, await jobs.count_by_status(pool)),
        (ROLLOUTS, await rollouts.count_by_status(pool)),
    ):
        gauge.clear()
        for status, count in counts.items():
            gauge.labels(status=status).set(count)
