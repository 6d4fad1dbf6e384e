"""`rollout api`: serve the HTTP API with uvicorn, in one process or several.

With `--workers N` uvicorn binds the port once and starts N processes that share it. Each one
calls `app_from_environment` itself, so each has its own settings, PostgreSQL pool, Temporal
client and handout cache; what they must agree on lives in PostgreSQL and Temporal. Their
metrics are gathered in a directory made for this start (api/metrics.py), so a scrape of any of
them shows the whole.

A stopping process answers its held polls at once (see `_answer_held_polls_on_signal`).
"""

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

from cli.errors import fail, settings_or_exit

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger(__name__)
_SignalHandler = Callable[[int, FrameType | None], Any]


# Longer than agents keep idle connections (agent.daemon CONNECTION_LIFETIME, 4 s), so the
# server never closes a connection an agent is about to reuse.
KEEP_ALIVE_SECONDS = 30


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
    from runtime.heap import collect_less
    from runtime.logs import configure_logging
    from server.settings import ApiSettings

    settings = settings_or_exit(ApiSettings, "rollout api")
    configure_logging(settings.log_format)
    app = create_app(settings)
    _answer_held_polls_on_signal(app)
    collect_less()
    return app


def _answer_held_polls_on_signal(app: "FastAPI") -> None:
    """uvicorn finishes in-flight requests before it runs the app's shutdown, so a held poll
    would keep a stopping process up for the rest of its hold (up to LONG_POLL_MAX_SECONDS).
    uvicorn calls this factory with its own SIGINT/SIGTERM handlers installed: ours run in front
    of them and end the holds (a plain signed answer, `"job": null`, as when a hold runs out)."""
    if threading.current_thread() is not threading.main_thread():
        return  # uvicorn handles no signal there either
    loop = asyncio.get_running_loop()

    def end_holds() -> None:
        dispatch = getattr(app.state, "dispatch", None)  # None until the app has started
        if dispatch is not None:
            dispatch.stopping()

    def in_front_of(then: _SignalHandler) -> _SignalHandler:
        def handler(signum: int, frame: FrameType | None) -> None:
            loop.call_soon_threadsafe(end_holds)  # the loop's own thread, but mid-statement
            then(signum, frame)

        return handler

    for sig in (signal.SIGINT, signal.SIGTERM):
        uvicorn_handler = signal.getsignal(sig)
        if callable(uvicorn_handler):
            signal.signal(sig, in_front_of(uvicorn_handler))


@contextlib.contextmanager
def _metrics_gathered(workers: int) -> Iterator[None]:
    """With several processes, prometheus_client's multiprocess mode: each process writes its
    samples to files in PROMETHEUS_MULTIPROC_DIR, read by whichever process is scraped. The
    directory is new for every start (files of an earlier start would add counts of processes
    long gone) and removed when the API stops."""
    if workers == 1:
        yield
        return
    directory = tempfile.mkdtemp(prefix="rollout-api-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory  # inherited by the processes started
    log.info("metrics of %d API processes gathered in %s", workers, directory)
    try:
        yield
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from api import connections
    from runtime.logs import configure_logging
    from server.settings import ApiSettings
    from temporal_client.connect import TemporalConfigError, connect_config

    # Checked here too, so bad settings stop the start with one line before any process forks.
    settings = settings_or_exit(ApiSettings, "rollout api")
    try:
        connect_config(settings)
    except TemporalConfigError as exc:
        fail(f"rollout api: refusing to start: {exc}")
    configure_logging(settings.log_format)
    # log_config=None: uvicorn's own lines go through our handler (JSON when LOG_FORMAT=json).
    # access_log=False: the app writes the access lines, without one per routine poll.
    with _metrics_gathered(args.workers):
        uvicorn.run(
            "cli.api:app_from_environment",
            factory=True,
            workers=args.workers,
            host=args.host,
            port=args.port,
            log_config=None,
            access_log=False,
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            http=connections.PROTOCOL,
            limit_concurrency=connections.max_connections(settings),
        )
    return 0
