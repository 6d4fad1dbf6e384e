"""`rollout api`: serve the HTTP API with uvicorn."""

import argparse
import os

from cli.errors import settings_or_exit


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("api", help="serve the control-plane HTTP API")
    p.add_argument("--host", default=os.environ.get("API_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("API_PORT", "8000")))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app
    from contract.logs import configure_logging
    from contract.settings import ApiSettings

    settings = settings_or_exit(ApiSettings, "rollout api")
    configure_logging(settings.log_format)
    # log_config=None: uvicorn's own lines go through our handler (JSON when LOG_FORMAT=json).
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_config=None,
        timeout_keep_alive=30,  # longer than agents keep idle connections (4 s)
    )
    return 0
