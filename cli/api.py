"""`rollout api`: serve the HTTP API with uvicorn, in one process or several.

With `--workers N` uvicorn binds the port once and starts N processes that share it. Each one
calls `app_from_environment` itself, so each has its own settings, PostgreSQL pool, Temporal
client and handout cache; what they must agree on lives in PostgreSQL and Temporal.
"""

import argparse
import os
from typing import TYPE_CHECKING

from cli.errors import fail, settings_or_exit

if TYPE_CHECKING:
    from fastapi import FastAPI


def _process_count(text: str) -> int:
    count = int(text)
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {count}")
    return count


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("api", help="serve the control-plane HTTP API")
    p.add_argument("--host", default=os.environ.get("API_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("API_PORT", "8000")))
    p.add_argument(
        "--workers",
        type=_process_count,
        default=os.environ.get("API_WORKERS", "1"),
        help="API processes sharing the port (default API_WORKERS, else 1)",
    )
    p.set_defaults(func=run)


def app_from_environment() -> "FastAPI":
    """uvicorn's app factory, called once in every API process."""
    from api.app import create_app
    from contract.logs import configure_logging
    from server.settings import ApiSettings

    settings = settings_or_exit(ApiSettings, "rollout api")
    configure_logging(settings.log_format)
    return create_app(settings)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from contract.logs import configure_logging
    from server.settings import ApiSettings
    from server.temporal_client import TemporalConfigError, connect_config

    # Checked here too, so bad settings stop the start with one line before any process forks.
    settings = settings_or_exit(ApiSettings, "rollout api")
    try:
        connect_config(settings)
    except TemporalConfigError as exc:
        fail(f"rollout api: refusing to start: {exc}")
    configure_logging(settings.log_format)
    # log_config=None: uvicorn's own lines go through our handler (JSON when LOG_FORMAT=json).
    uvicorn.run(
        "cli.api:app_from_environment",
        factory=True,
        workers=args.workers,
        host=args.host,
        port=args.port,
        log_config=None,
        timeout_keep_alive=30,  # longer than agents keep idle connections (4 s)
    )
    return 0
