"""ASGI middleware timing every request by its route template (not its raw path: bounded labels)."""

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.metrics import REQUEST_SECONDS


class RequestTimer:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            REQUEST_SECONDS.labels(
                route=template, method=scope["method"], status=str(status)
            ).observe(time.perf_counter() - started)
