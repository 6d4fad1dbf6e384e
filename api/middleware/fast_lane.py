"""The fleet's requests served before FastAPI's and Starlette's own middlewares and routing.

Every agent polls every few seconds, and most polls find nothing: polls (and reports, on every
batch's critical path) are by far the most frequent requests, and a held poll waits up to 25 s
with its whole call chain alive. FastAPI's handling around a route (its server-error, telemetry,
body-limit and exception middlewares, exit stacks, route matching through included routers,
dependency solving, which parses cookies even for a route without parameters) cost about as much
CPU as the poll's own checks (py-spy, docs/performance.md), and each layer is a coroutine more
held for every connected agent. The agent routes take the bare request and need none of it, so
`ControlPlaneApi` hands them to a lane of their own, one coroutine that does what the request
timer and the edge gate do, then calls the route's endpoint: each middleware is a coroutine frame
and a wrapped `send` more, kept for every held poll (about 2 KiB of the 16 an agent cost) and
crossed by every request.

What stays the same: the routes (still registered, so the OpenAPI document and any other method
on their paths are FastAPI's), the middlewares an agent request meets (the edge gate's size
limit, the request timer, labelled with the route's template), and the answer to every error,
from the handlers the app installed, looked up as FastAPI's own would. A bug's exception is
answered 500 by uvicorn, as Starlette's outermost middleware would.
"""

import inspect
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from api.middleware.edge import BodyTooLarge, answer_too_large, bounded_body
from api.middleware.request_timer import observe
from contract.wire import MAX_BODY_BYTES

Endpoint = Callable[[Request], Awaitable[Response]]
ErrorHandler = Callable[[Request, Any], Response | Awaitable[Response]]


class ControlPlaneApi(FastAPI):
    """FastAPI, with POSTs to the fast routes taken by `fast_lane` (set by api.app)."""

    fast_lane: ASGIApp | None = None
    fast_paths: frozenset[str] = frozenset()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lane = self.fast_lane
        if (
            lane is not None
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] in self.fast_paths
        ):
            scope["app"] = self  # as Starlette sets it: `request.app` is this app
            await lane(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


class _BodyRead(Request):
    """A request whose body the lane has read (bounded): `body()` is that, and `receive` the
    server's own, which tells of the client hanging up."""

    def __init__(self, scope: Scope, receive: Receive, body: bytes) -> None:
        super().__init__(scope, receive)
        self._read = body

    async def body(self) -> bytes:
        return self._read


class FastLane:
    """The fast lane: serves POST on each of `routes` with its endpoint, timed and logged as the
    request timer does (`secrets` never in an access line), its body bounded as the edge gate
    bounds an agent's; `on_success` is the edge gate's, called on every 2xx answer."""

    def __init__(
        self,
        fastapi: FastAPI,
        routes: Sequence[APIRoute],
        *,
        secrets: Collection[str],
        on_success: Callable[[], None],
    ) -> None:
        self.fastapi = fastapi
        self.routes = {route.path: route for route in routes}
        self.secrets = secrets
        self.on_success = on_success

    @property
    def paths(self) -> frozenset[str]:
        return frozenset(self.routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        route = self.routes[scope["path"]]
        scope["route"] = route  # for the request timer's label
        status, answered = 500, False  # a client gone before its answer gets no access line
        try:
            try:
                body = await bounded_body(scope, receive, MAX_BODY_BYTES)
            except BodyTooLarge:
                status, answered = 413, True
                await answer_too_large(send, MAX_BODY_BYTES)
                return
            if body is None:
                return  # the client left before sending its request: nobody to answer
            request = _BodyRead(scope, receive, body)
            endpoint: Endpoint = route.endpoint
            try:
                response = await endpoint(request)
            except Exception as exc:
                handler = self._handler_for(exc)
                if handler is None:
                    raise  # a bug: uvicorn answers 500
                answer = handler(request, exc)
                response = await answer if inspect.isawaitable(answer) else answer
            status, answered = response.status_code, True
            if 200 <= status < 300:
                self.on_success()
            await response(scope, receive, send)
        except Exception:
            answered = True  # uvicorn answers 500, as Starlette's outermost middleware would
            raise
        finally:
            observe(scope, status, started, answered, self.secrets)

    def _handler_for(self, exc: Exception) -> ErrorHandler | None:
        """The handler of the nearest class in the exception's MRO, as Starlette looks it up."""
        handlers = self.fastapi.exception_handlers
        for cls in type(exc).__mro__:
            if cls in handlers:
                handler: ErrorHandler = handlers[cls]
                return handler
        return None
