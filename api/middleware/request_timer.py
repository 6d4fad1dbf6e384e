"""ASGI middleware timing every request by its route template and method (bounded labels,
api.metrics.request_labels), and writing its access line (api.middleware.access_log)."""

import functools
import time
from collections.abc import Collection

from prometheus_client import Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.metrics import REQUEST_SECONDS, request_labels
from api.middleware import access_log


class RequestTimer:
    """`secrets`: values the access line must never show (api.middleware.access_log)."""

    def __init__(self, app: ASGIApp, secrets: Collection[str] = ()) -> None:
        self.app = app
        self.secrets = secrets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        answered = False  # a client gone before its answer gets no access line, as in uvicorn

        async def send_and_note_status(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        except Exception:
            answered = True  # Starlette's outermost middleware answers 500
            raise
        finally:
            observe(scope, status, started, answered, self.secrets)


def observe(
    scope: Scope, status: int, started: float, answered: bool, secrets: Collection[str]
) -> None:
    """The request's latency by route, and its access line when it was answered."""
    route, method = request_labels(scope)
    _timer(route, method, status).observe(time.perf_counter() - started)
    if answered:
        access_log.note(scope, status, secrets)


@functools.cache  # the labels are a bounded set (api.metrics.request_labels)
def _timer(route: str, method: str, status: int) -> Histogram:
    """The histogram of these labels, looked up once: a lookup cost as much as the observation."""
    return REQUEST_SECONDS.labels(route=route, method=method, status=str(status))
