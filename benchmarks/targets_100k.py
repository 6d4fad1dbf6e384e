"""A rollout of 100,000 targets stays far below Temporal's limits: the figures.

    .venv/bin/python -m benchmarks.targets_100k [--batches 4] [--batch-size 1000] [--json]

Starts an embedded PostgreSQL and the time-skipping Temporal server (free loopback ports, a
temporary folder), a real worker, inserts 100,000 instances of 39-character ids in one
statement, starts a rollout at the largest batch size the API accepts and drives a few batches
(every job of a batch reports `succeeded`, then `advance`), then aborts it so its history
closes. It prints the largest payload of every run's history (Temporal refuses one over
2 MiB), each run's history size (terminated at 50 MiB) and what the live queries answer with.
tests/test_targets_100k.py runs the same `drive` and asserts the bounds. Not a test: the
timings depend on the machine.
"""

import argparse
import asyncio
import json
import os
import platform
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from google.protobuf.message import Message
from pydantic import BaseModel
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter

from activities.rollouts import RolloutActivities
from contract.manifest import UnsignedManifest
from devstack.ports import free_port
from devstack.postgres import EmbeddedPostgres
from domain.rollouts import RolloutSpec, rollout_workflow_id
from server.settings import Settings
from store import releases, rollout_targets, rollouts
from store.migrate import apply_migrations
from store.pool import connect, open_pool
from temporal_client import rollouts as rollout_client
from tests.fixtures_temporal import fetch_chain, start_time_skipping_server
from worker.main import build_worker
from workflows.rollout_models import (
    AbortInput,
    AdvanceInput,
    JobReportSignal,
    RolloutView,
)

FLEET = 100_000
# "host-" and 34 digits: 39-character ids, long host names, so the payloads measured are not
# flattered by short ones.
ID_DIGITS = 34
PAYLOAD_LIMIT = 2 * 1024 * 1024  # Temporal refuses a larger payload
HISTORY_LIMIT = 50 * 1024 * 1024  # Temporal terminates a run whose history grows past this
# Reports in flight: more make the workflow take in hundreds of signals in one task, which on a
# loaded 2-core machine trips the SDK's 2 s deadlock detector (the signals, not the targets).
CONCURRENT_REPORTS = 8
TIMEOUT = 60.0
QUERY_TIMEOUT = 10.0

# Jobs a batch: 2,000 reports, each as its own signal (the API's report batching is not in play).
BATCH_SIZE = 1_000


class RunFigures(BaseModel):
    events: int
    signals: int
    history_bytes: int
    largest_payload_bytes: int
    largest_payload_event: str


class Figures(BaseModel):
    targets: int
    batch_size: int
    batches_driven: int
    reports_sent: int
    seed_seconds: float
    start_seconds: float  # create → batch 1 handed out: snapshot, first batch read and written
    batch_seconds: list[float]  # handed out → every report sent → settled, per batch
    snapshot_rows: int
    largest_view_bytes: int  # the `view` query's answer: the current batch, every attempt
    runs: list[RunFigures]

    @property
    def largest_payload_bytes(self) -> int:
        return max(run.largest_payload_bytes for run in self.runs)

    @property
    def largest_history_bytes(self) -> int:
        return max(run.history_bytes for run in self.runs)


async def seed_release(conn: asyncpg.Connection) -> str:
    """A signed release of 1.4.0 on stable (with migrations), stored; its id."""
    manifest = UnsignedManifest(
        version="1.4.0",
        sha="0123456789abcdef0123456789abcdef01234567",
        channel="stable",
        migrations_required=True,
        breaking_changes=None,
        released_at="2026-11-01T12:00:00Z",
    ).signed(secrets.token_hex(16))
    return (await releases.insert_or_get(conn, manifest)).release.id


async def seed_fleet(
    conn: asyncpg.Connection, count: int, *, channel: str = "stable", version: str = "1.3.0"
) -> float:
    """Insert `count` instances below `version` in one statement; returns the seconds taken."""
    began = time.perf_counter()
    await conn.execute(
        "INSERT INTO instances (instance_id, channel, current_version)"
        " SELECT 'host-' || lpad(i::text, $2, '0'), $3, $4 FROM generate_series(1, $1) AS i",
        count,
        ID_DIGITS,
        channel,
        version,
    )
    return time.perf_counter() - began


def _payload_sizes(message: Message) -> Iterator[int]:
    """Serialized size of every payload list (or lone payload) in a history event."""
    if isinstance(message, Payloads | Payload):
        yield message.ByteSize()
        return
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            items = list(value.values())
        elif field.is_repeated:
            items = list(value)
        else:
            items = [value]
        for item in items:
            if isinstance(item, Message):
                yield from _payload_sizes(item)


def run_figures(history: WorkflowHistory) -> RunFigures:
    events = history.events
    largest, where = 0, ""
    for event in events:
        for size in _payload_sizes(event):
            if size > largest:
                largest, where = size, event.WhichOneof("attributes") or "?"
    return RunFigures(
        events=len(events),
        signals=sum(
            e.HasField("workflow_execution_signaled_event_attributes") for e in history.events
        ),
        history_bytes=sum(event.ByteSize() for event in events),
        largest_payload_bytes=largest,
        largest_payload_event=where.removesuffix("_event_attributes"),
    )


def _size(value: BaseModel) -> int:
    (payload,) = pydantic_data_converter.payload_converter.to_payloads([value])
    return payload.ByteSize()


async def _view(client: Client, spec: RolloutSpec) -> RolloutView:
    return await rollout_client.live_view(client, spec.id, timeout=QUERY_TIMEOUT)


async def _settled(client: Client, spec: RolloutSpec, batch: int) -> RolloutView:
    """The view once batch `batch` has settled (awaiting advance, or completed)."""
    while True:
        try:
            view = await _view(client, spec)
        except rollout_client.RolloutUnavailable:
            continue  # a query can time out while the run continues as new: ask again
        if view.current_batch == batch and view.status in ("awaiting_advance", "completed"):
            return view
        await asyncio.sleep(0.1)


async def drive(
    client: Client,
    conn: asyncpg.Connection,
    release_id: str,
    *,
    task_queue: str,
    batches: int,
    batch_size: int = BATCH_SIZE,
    seed_seconds: float = 0.0,
) -> tuple[Figures, list[WorkflowHistory]]:
    """Start a rollout over the instances in the database, report `succeeded` for every job of
    the first `batches` batches (advancing after each), abort it, and measure its histories
    (returned too, first run first)."""
    spec = RolloutSpec(
        id=uuid.uuid4().hex,
        manifest_id=release_id,
        version="1.4.0",
        channel="stable",
        batch_size=batch_size,
        created_by="benchmark",
    )
    await rollouts.insert(conn, spec)
    began = time.perf_counter()
    await rollout_client.start_rollout(client, spec, task_queue=task_queue, timeout=TIMEOUT)
    start_seconds = time.perf_counter() - began
    handle = client.get_workflow_handle(rollout_workflow_id(spec.id))
    limit = asyncio.Semaphore(CONCURRENT_REPORTS)
    largest_view = reports = 0

    async def succeed(instance_id: str, job_id: str) -> None:
        async with limit:
            signal = JobReportSignal(job_id=job_id, instance_id=instance_id, status="succeeded")
            await rollout_client.report_job(client, spec.id, signal, timeout=TIMEOUT)

    targets = (await _view(client, spec)).target_count
    rows = await rollout_targets.count(conn, spec.id)  # before the abort drops them
    batch_seconds = []
    for number in range(1, batches + 1):
        began = time.perf_counter()
        view = await _view(client, spec)
        largest_view = max(largest_view, _size(view))
        batch = [job for job in view.jobs if job.status == "pending"]
        await asyncio.gather(*(succeed(job.instance_id, job.id) for job in batch))
        reports += len(batch)
        largest_view = max(largest_view, _size(await _settled(client, spec, number)))
        batch_seconds.append(time.perf_counter() - began)
        print(f"batch {number} settled in {batch_seconds[-1]:.1f} s", file=sys.stderr)
        if number < batches:
            await handle.execute_update("advance", AdvanceInput(actor="benchmark"))
    await handle.execute_update("abort", AbortInput(actor="benchmark", reason="measured"))
    await handle.result()
    chain = await fetch_chain(client, handle.id)
    figures = Figures(
        targets=targets,
        batch_size=batch_size,
        batches_driven=batches,
        reports_sent=reports,
        seed_seconds=seed_seconds,
        start_seconds=start_seconds,
        batch_seconds=batch_seconds,
        snapshot_rows=rows,
        largest_view_bytes=largest_view,
        runs=[run_figures(run) for run in chain],
    )
    return figures, chain


def render(figures: Figures) -> str:
    mib = 1024 * 1024
    lines = [
        f"{figures.targets} targets (snapshot rows: {figures.snapshot_rows}),"
        f" batch size {figures.batch_size}, {figures.batches_driven} batches driven"
        f" ({figures.reports_sent} reports)",
        f"seed {figures.seed_seconds:.2f} s · start (snapshot + batch 1 handed out)"
        f" {figures.start_seconds:.2f} s · each batch driven (s):"
        f" {', '.join(f'{x:.1f}' for x in figures.batch_seconds)}",
        f"largest payload in history: {figures.largest_payload_bytes:,} bytes"
        f" ({figures.largest_payload_bytes / PAYLOAD_LIMIT:.1%} of 2 MiB)",
        f"largest run history: {figures.largest_history_bytes:,} bytes"
        f" ({figures.largest_history_bytes / HISTORY_LIMIT:.1%} of 50 MiB)",
        f"largest view query answer: {figures.largest_view_bytes:,} bytes",
        f"{'run':>3} {'events':>7} {'signals':>7} {'history MiB':>11} {'largest payload':>15}  in",
    ]
    for number, run in enumerate(figures.runs, start=1):
        lines.append(
            f"{number:>3} {run.events:>7} {run.signals:>7} {run.history_bytes / mib:>11.2f}"
            f" {run.largest_payload_bytes:>15,}  {run.largest_payload_event}"
        )
    return "\n".join(lines)


def machine() -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{platform.node()} · {os.cpu_count()} cores · {platform.processor() or platform.machine()}"
        f" · load {load} · {datetime.now(UTC).isoformat(timespec='minutes')}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="targets-100k-") as folder:
        server = EmbeddedPostgres(Path(folder) / "data", free_port(), durable=False)
        with (Path(folder) / "postgres.log").open("ab") as log:
            server.start(stdout=log.fileno())
        try:
            conn = await connect(server.dsn)
            await apply_migrations(conn)
            release_id = await seed_release(conn)
            seeded = await seed_fleet(conn, FLEET)
            env = await start_time_skipping_server()
            pool = await open_pool(server.dsn, min_size=1, max_size=4)
            task_queue = f"targets-100k-{uuid.uuid4().hex[:8]}"
            settings = Settings(database_url=server.dsn, temporal_task_queue=task_queue)
            try:
                async with build_worker(env.client, settings, RolloutActivities(pool)):
                    figures, _ = await drive(
                        env.client,
                        conn,
                        release_id,
                        task_queue=task_queue,
                        batches=args.batches,
                        batch_size=args.batch_size,
                        seed_seconds=seeded,
                    )
            finally:
                await pool.close()
                await conn.close()
                await env.shutdown()
        finally:
            server.stop()
    if args.json:
        print(json.dumps(figures.model_dump() | {"machine": machine()}, indent=2))
    else:
        print(machine())
        print(render(figures))


if __name__ == "__main__":
    asyncio.run(main())
