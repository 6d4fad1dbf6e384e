"""`rollout worker`: the Temporal worker running rollout workflows and activities."""

import argparse
import asyncio

from cli.errors import fail, settings_or_exit


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker",
        help="run the Temporal worker (TEMPORAL_ADDRESS, TEMPORAL_TASK_QUEUE, DATABASE_URL)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from contract.logs import configure_logging
    from server.settings import Settings
    from worker.main import run_worker

    settings = settings_or_exit(Settings, "rollout worker")
    configure_logging(settings.log_format)
    try:
        asyncio.run(run_worker(settings))
    except (OSError, RuntimeError) as exc:
        fail(f"rollout worker: {exc}")
    return 0
