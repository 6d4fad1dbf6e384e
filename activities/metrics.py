"""Prometheus metrics of the worker process, served when WORKER_METRICS_PORT is set."""

from prometheus_client import Counter

UNSTORABLE_TEXT_WRITES = Counter(
    "rollout_unstorable_text_writes_total",
    "Read-model writes PostgreSQL refused for their text, written again with it made storable",
)
