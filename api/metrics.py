"""Prometheus metrics of the API process, served at /metrics."""

from prometheus_client import Counter, Histogram

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
