"""The final figures of a run: throughput, client-side latency, job outcomes, and per-batch wall
time of the rollouts the fleet took part in (from the admin API's job rows)."""

import math
from collections import defaultdict
from datetime import datetime
from typing import Any

from pydantic import BaseModel

TERMINAL_JOB_STATUSES = frozenset(
    {"succeeded", "failed", "rolled_back", "rollback_failed", "timed_out", "cancelled"}
)


class Latency(BaseModel):
    count: int
    p50_ms: float | None
    p99_ms: float | None


class BatchFigures(BaseModel):
    number: int
    jobs: int
    settled: int
    # First job created → last job settled; None while a job of the batch is still open.
    wall_seconds: float | None


class RolloutFigures(BaseModel):
    id: str
    status: str
    batches: list[BatchFigures]
    # Rollout created → finished; None while it is not finished.
    wall_seconds: float | None


class Figures(BaseModel):
    agents: int
    seconds: float
    polls: int
    polls_per_second: float
    poll_latency: Latency
    report_latency: Latency
    # How late the simulator's own event loop woke up: when high, the latencies above include
    # the simulator's queueing, not only the control plane's.
    client_loop_lag: Latency
    request_errors: dict[str, int]
    jobs: dict[str, int]
    agents_on_version: dict[str, int]
    rollouts: list[RolloutFigures]


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def latency(seconds: list[float]) -> Latency:
    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 2)

    return Latency(
        count=len(seconds),
        p50_ms=ms(percentile(seconds, 0.5)),
        p99_ms=ms(percentile(seconds, 0.99)),
    )


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def batch_figures(jobs: list[dict[str, Any]]) -> list[BatchFigures]:
    """From GET /api/updates/jobs rows: every attempt of a batch counts, retries included."""
    by_batch: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for job in jobs:
        by_batch[int(job["batch"])].append(job)
    figures = []
    for number, rows in sorted(by_batch.items()):
        settled = [r for r in rows if r["status"] in TERMINAL_JOB_STATUSES]
        wall = None
        if len(settled) == len(rows):
            start = min(_time(r["createdAt"]) for r in rows)
            end = max(_time(r["updatedAt"]) for r in rows)
            wall = round((end - start).total_seconds(), 3)
        figures.append(
            BatchFigures(number=number, jobs=len(rows), settled=len(settled), wall_seconds=wall)
        )
    return figures


def rollout_figures(rollout: dict[str, Any], jobs: list[dict[str, Any]]) -> RolloutFigures:
    finished = rollout.get("finishedAt")
    wall = None
    if finished:
        wall = round((_time(finished) - _time(rollout["createdAt"])).total_seconds(), 3)
    return RolloutFigures(
        id=rollout["id"], status=rollout["status"], batches=batch_figures(jobs), wall_seconds=wall
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def render(figures: Figures) -> str:
    lines = [
        f"agents            {figures.agents}",
        f"wall time         {figures.seconds:.1f} s",
        f"polls             {figures.polls} ({figures.polls_per_second:.1f}/s)",
        f"poll latency      p50 {_ms(figures.poll_latency.p50_ms)}"
        f"  p99 {_ms(figures.poll_latency.p99_ms)}",
        f"report latency    p50 {_ms(figures.report_latency.p50_ms)}"
        f"  p99 {_ms(figures.report_latency.p99_ms)}  ({figures.report_latency.count} reports)",
        f"client loop lag   p50 {_ms(figures.client_loop_lag.p50_ms)}"
        f"  p99 {_ms(figures.client_loop_lag.p99_ms)}",
        "request errors    "
        + (", ".join(f"{n} {k}" for k, n in sorted(figures.request_errors.items())) or "none"),
        "jobs              "
        + (", ".join(f"{n} {k}" for k, n in sorted(figures.jobs.items())) or "none"),
        "agents' versions  "
        + ", ".join(f"{n} on {v}" for v, n in sorted(figures.agents_on_version.items())),
    ]
    for rollout in figures.rollouts:
        total = "-" if rollout.wall_seconds is None else f"{rollout.wall_seconds:.1f} s"
        lines.append(f"rollout {rollout.id}  {rollout.status}  wall time {total}")
        for batch in rollout.batches:
            wall = "not settled" if batch.wall_seconds is None else f"{batch.wall_seconds:.2f} s"
            lines.append(f"  batch {batch.number:>3}  {batch.settled}/{batch.jobs} settled  {wall}")
    return "\n".join(lines)
