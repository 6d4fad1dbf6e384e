"""Benchmark: how fast Temporal answers a query on a workflow with nothing to do.

    .venv/bin/python -m benchmarks.query_latency --seconds 10

A Temporal dev server (in memory) and a worker in this process; one tiny workflow waits on
timers while this client queries it one query at a time. It is the floor under every held
poll's handout and every admin action's answer (both ask the rollout's workflow), measured
without PostgreSQL, HTTP or the rollout workflow; read it next to benchmarks/cpu_stalls.py.
Not a test: numbers depend on the machine.
"""

import argparse
import asyncio
import statistics
import time
import uuid

from temporalio import workflow
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from tests.fixtures_temporal import venv_binary

TASK_QUEUE = "query-latency"


@workflow.defn
class Idle:
    def __init__(self) -> None:
        self.wakes = 0

    @workflow.run
    async def run(self, seconds: float) -> None:
        while self.wakes < seconds:
            await workflow.sleep(1)
            self.wakes += 1

    @workflow.query
    def wakes_so_far(self) -> int:
        return self.wakes


async def measure(seconds: float, interval: float) -> list[float]:
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=venv_binary("temporal"))
    try:
        async with Worker(
            env.client,
            task_queue=TASK_QUEUE,
            workflows=[Idle],
            workflow_runner=UnsandboxedWorkflowRunner(),
        ):
            handle = await env.client.start_workflow(
                Idle.run, seconds + 5, id=f"idle-{uuid.uuid4().hex}", task_queue=TASK_QUEUE
            )
            latencies: list[float] = []
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                started = time.monotonic()
                await handle.query(Idle.wakes_so_far)
                latencies.append((time.monotonic() - started) * 1000)
                await asyncio.sleep(interval)
            await handle.terminate("measured")
            return latencies
    finally:
        await env.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=0.05, help="pause between queries")
    args = parser.parse_args()
    latencies = sorted(asyncio.run(measure(args.seconds, args.interval)))
    deciles = statistics.quantiles(latencies, n=10)
    print(
        f"{len(latencies)} queries: p50 {deciles[4]:.0f} ms, p90 {deciles[8]:.0f} ms,"
        f" max {latencies[-1]:.0f} ms"
    )


if __name__ == "__main__":
    main()
