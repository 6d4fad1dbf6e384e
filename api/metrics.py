"""Prometheus metrics of the API, served at /metrics (or on API_METRICS_ADDRESS alone).

Every label set is bounded whatever clients send: a request is labelled with its route's
template (`unmatched` for no route) and its method only when that route serves it (`other`
otherwise), so odd methods and paths cannot grow the answer. A scrape is one computation per
process however many scrapers ask at once (`Scraper`).

With several API processes (`rollout api --workers N`) a scrape lands on one of them, so each
process writes its samples to files in `PROMETHEUS_MULTIPROC_DIR` (prometheus_client's
multiprocess mode, chosen when the variable is set at import; cli/api.py sets it to a directory
made for that start) and every scrape reads them all back: counters and histograms summed over
the processes, held polls summed over the living ones. The fleet gauges are read from
PostgreSQL at scrape time instead, so they are the same whichever process answers.
"""

import asyncio
import hmac
import os
from collections.abc import Iterable
from pathlib import Path

import asyncpg
from prometheus_client import REGISTRY, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from starlette.types import Scope

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


UNMATCHED_ROUTE = "unmatched"
OTHER_METHOD = "other"
# What a route without its own list of methods (a mount: the docs' static files) serves.
_READ_METHODS = frozenset({"GET", "HEAD"})


def request_labels(scope: Scope) -> tuple[str, str]:
    """(route, method) of a request, from a bounded set: the route's template, or `unmatched`;
    the method when the route serves it, else `other` (a 405, an unknown path, `FOO /`)."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    if route is None or not isinstance(template, str):
        return UNMATCHED_ROUTE, OTHER_METHOD
    served = getattr(route, "methods", None) or _READ_METHODS
    method = scope["method"]
    return template, method if method in served else OTHER_METHOD


def bearer_token_problem(expected: str | None, authorization: bytes | None) -> str | None:
    """Why `authorization` (the raw header) does not carry `Bearer <expected>`, or None when
    it does or no token is required (API_METRICS_TOKEN unset). Compared in constant time."""
    if expected is None:
        return None
    if authorization is None:
        return "missing authorization header (Bearer <API_METRICS_TOKEN>)"
    if not hmac.compare_digest(authorization, b"Bearer " + expected.encode()):
        return "invalid metrics token"
    return None


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


class Scraper:
    """Makes this process's exposition, once for every scrape that arrives while it is made:
    ten scrapers at once cost one read of PostgreSQL and one rendering, not ten."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._current: asyncio.Future[bytes] | None = None

    async def text(self) -> bytes:
        if self._current is None:
            self._current = asyncio.ensure_future(self._make())
        # A scraper that hangs up does not cancel the scrape the others wait for.
        return await asyncio.shield(self._current)

    async def _make(self) -> bytes:
        try:
            return exposition(await fleet_gauges(self.pool))
        finally:
            self._current = None  # the next scrape reads anew
