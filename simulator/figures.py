"""The final figures of a run: throughput, client-side latency, job outcomes, and per-batch wall
time of the rollouts the fleet took part in (from the admin API's job rows), plus each simulator
process's own loop lag: a run whose simulator lagged is flagged, its figures include the
simulator's queueing."""

import math
from collections import defaultdict
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from contract.wire import TERMINAL_JOB_STATUSES

# A simulator loop this late at the median is no longer a neutral client.
LAGGING_P50_MS = 20.0


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
    # When a poll of this simulator first and last got a job of the batch (the control plane
    # does not store handouts); None when none of its agents got one.
    first_handout_at: datetime | None = None
    last_handout_at: datetime | None = None


class RolloutFigures(BaseModel):
    id: str
    status: str
    batches: list[BatchFigures]
    # Rollout created → finished; None while it is not finished.
    wall_seconds: float | None


class ProcessFigures(BaseModel):
    agents: int
    polls: int
    loop_lag: Latency

    @property
    def lagging(self) -> bool:
        return self.loop_lag.p50_ms is not None and self.loop_lag.p50_ms > LAGGING_P50_MS


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
    processes: list[ProcessFigures]
    # Some process's loop lag p50 was above LAGGING_P50_MS: the figures are the simulator's too.
    lagging: bool
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


def batch_figures(
    jobs: list[dict[str, Any]], handouts: Mapping[str, float] | None = None
) -> list[BatchFigures]:
    """From GET /api/updates/jobs rows: every attempt of a batch counts, retries included.
    `handouts`: job id → when (time.time()) a poll first handed it out."""
    handouts = handouts or {}
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
        handed = [handouts[r["id"]] for r in rows if r["id"] in handouts]
        figures.append(
            BatchFigures(
                number=number,
                jobs=len(rows),
                settled=len(settled),
                wall_seconds=wall,
                first_handout_at=datetime.fromtimestamp(min(handed), UTC) if handed else None,
                last_handout_at=datetime.fromtimestamp(max(handed), UTC) if handed else None,
            )
        )
    return figures


def rollout_figures(
    rollout: dict[str, Any], jobs: list[dict[str, Any]], handouts: Mapping[str, float]
) -> RolloutFigures:
    finished = rollout.get("finishedAt")
    wall = None
    if finished:
        wall = round((_time(finished) - _time(rollout["createdAt"])).total_seconds(), 3)
    return RolloutFigures(
        id=rollout["id"],
        status=rollout["status"],
        batches=batch_figures(jobs, handouts),
        wall_seconds=wall,
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
        f"  p99 {_ms(figures.client_loop_lag.p99_ms)}"
        f"  over {len(figures.processes)} process(es)",
        *(
            f"  process {n}: {p.agents} agents, {p.polls} polls,"
            f" lag p50 {_ms(p.loop_lag.p50_ms)} p99 {_ms(p.loop_lag.p99_ms)}"
            + ("  LAGGING" if p.lagging else "")
            for n, p in enumerate(figures.processes, 1)
        ),
        "request errors    "
        + (", ".join(f"{n} {k}" for k, n in sorted(figures.request_errors.items())) or "none"),
        "jobs              "
        + (", ".join(f"{n} {k}" for k, n in sorted(figures.jobs.items())) or "none"),
        "agents' versions  "
        + ", ".join(f"{n} on {v}" for v, n in sorted(figures.agents_on_version.items())),
    ]
    if figures.lagging:
        lines.append(
            f"SIMULATOR LAGGING: a loop's lag p50 exceeded {LAGGING_P50_MS:g} ms; the rates and"
            " latencies above include the simulator's own queueing (try more --processes)"
        )
    for rollout in figures.rollouts:
        total = "-" if rollout.wall_seconds is None else f"{rollout.wall_seconds:.1f} s"
        lines.append(f"rollout {rollout.id}  {rollout.status}  wall time {total}")
        for batch in rollout.batches:
            wall = "not settled" if batch.wall_seconds is None else f"{batch.wall_seconds:.2f} s"
            lines.append(f"  batch {batch.number:>3}  {batch.settled}/{batch.jobs} settled  {wall}")
    return "\n".join(lines)
