"""`rollout worker`: the Temporal worker running rollout workflows and activities."""

import argparse
import asyncio
import logging
import os
import sys

from cli.errors import fail, settings_or_exit


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker",
        help="run the Temporal worker (TEMPORAL_ADDRESS, TEMPORAL_TASK_QUEUE, DATABASE_URL)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from runtime.logs import configure_logging
    from server.settings import Settings
    from worker.main import run_worker

    settings = settings_or_exit(Settings, "rollout worker")
    configure_logging(settings.log_format)
    try:
        asyncio.run(run_worker(settings))
    except (OSError, RuntimeError) as exc:
        fail(f"rollout worker: {exc}")
    # Stopped cleanly: leave without interpreter finalization, during which the Temporal SDK's
    # native threads were seen to abort the process (PyGILState_Release) after a clean stop.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
