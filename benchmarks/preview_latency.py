"""Benchmark: how long a rollout's preview takes for a large channel.

    .venv/bin/python -m benchmarks.preview_latency --hosts 10000 --rounds 20

Starts an embedded PostgreSQL (no fsync) in a temp folder, inserts `--hosts` instances below a
release's version in one statement, then asks for the preview `--rounds` times, as the API does
(services.previews, then the answer serialised as JSON), with a percentage plan and a canary.
Prints p50, p90 and the slowest, and the answer's size. Not a test: numbers depend on the machine.
"""

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from api.schemas import PreviewOut
from benchmarks.targets_100k import seed_fleet, seed_release
from devstack.ports import free_port
from devstack.postgres import EmbeddedPostgres
from domain.plans import BatchPlan
from services import previews
from store.migrate import apply_migrations
from store.pool import connect, open_pool


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=20)
    return p.parse_args()


async def measure(dsn: str, args: argparse.Namespace) -> tuple[list[float], int]:
    conn = await connect(dsn)
    await apply_migrations(conn)
    release_id = await seed_release(conn)
    await seed_fleet(conn, args.hosts)
    await conn.close()
    pool = await open_pool(dsn, min_size=1, max_size=4)
    plan = BatchPlan(kind="steps", steps=[1, "1%", "10%", "50%", "100%"], canary=True)
    seconds, size = [], 0
    try:
        for _ in range(args.rounds):
            began = time.perf_counter()
            found = await previews.preview(
                pool,
                manifest_id=release_id,
                channel="stable",
                batch_size=None,
                plan=plan,
                auto_advance=True,
                bake_seconds=60,
                stale_after_seconds=7 * 86_400,
            )
            size = len(PreviewOut.from_preview(found).model_dump_json(by_alias=True))
            seconds.append(time.perf_counter() - began)
    finally:
        await pool.close()
    return seconds, size


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="preview-latency-") as folder:
        server = EmbeddedPostgres(Path(folder) / "data", free_port(), durable=False)
        server.start()
        try:
            seconds, size = asyncio.run(measure(server.dsn, args))
        finally:
            server.stop()
    ms = sorted(s * 1000 for s in seconds)
    print(
        f"preview of {args.hosts} hosts, {len(ms)} rounds: p50 {statistics.median(ms):.0f} ms,"
        f" p90 {ms[int(len(ms) * 0.9) - 1]:.0f} ms, slowest {ms[-1]:.0f} ms; answer {size} bytes"
    )


if __name__ == "__main__":
    main()
