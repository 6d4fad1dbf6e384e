"""Prometheus metrics of the API, served at /metrics.

With several API processes (`rollout api --workers N`) a scrape lands on one of them, so each
process writes its samples to files in `PROMETHEUS_MULTIPROC_DIR` (prometheus_client's
multiprocess mode, chosen when the variable is set at import; cli/api.py sets it to a directory
made for that start) and every scrape reads them all back: counters and histograms summed over
the processes, held polls summed over the living ones. The fleet gauges are read from
PostgreSQL at scrape time instead, so they are the same whichever process answers.
"""

import os
from collections.abc import Iterable
from pathlib import Path

import asyncpg
from prometheus_client import REGISTRY, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from store import jobs, rollouts

MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")

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


async def fleet_gauges(pool: asyncpg.Pool) -> list[Metric]:
    """Gauges of the whole fleet, read now, so every API process reports the same."""
    families: list[Metric] = []
    for name, documentation, counts in (
        ("rollout_jobs", "Update jobs in the read model, by status", jobs.count_by_status),
        ("rollout_rollouts", "Rollouts in the read model, by status", rollouts.count_by_status),
    ):
        family = GaugeMetricFamily(name, documentation, labels=["status"])
        for status, count in (await counts(pool)).items():
            family.add_metric([status], count)
        families.append(family)
    return families


class _Scrape(Collector):
    def __init__(self, fleet: list[Metric]) -> None:
        self.fleet = fleet

    def collect(self) -> Iterable[Metric]:
        yield from self.fleet
        if MULTIPROCESS_DIR is None:
            yield from REGISTRY.collect()
            return
        _forget_live_gauges_of_dead_processes(MULTIPROCESS_DIR)
        yield from MultiProcessCollector(None, MULTIPROCESS_DIR).collect()


def exposition(fleet: list[Metric]) -> bytes:
    """The text a scrape gets: this process's metrics, or every process's in multiprocess mode."""
    return generate_latest(_Scrape(fleet))


def _forget_live_gauges_of_dead_processes(directory: str) -> None:
    """A process that died without stopping (killed, then replaced by uvicorn's supervisor) left
    its held polls counted in its file; no one else tells prometheus_client it is gone."""
    for file in Path(directory).glob("gauge_live*_*.db"):
        pid = int(file.stem.rsplit("_", 1)[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark_process_dead(pid, directory)
        except PermissionError:
            pass  # alive, owned by someone else
