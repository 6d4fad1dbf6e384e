"""The fleet's requests, answered by their endpoints with none of the ASGI machinery around them.

Every agent polls every few seconds, and most polls find nothing: polls (and reports, on every
batch's critical path) are by far the most frequent requests, and a held poll waits up to 25 s
with its whole call chain alive. Around a route, uvicorn's request cycle (its scope, its `receive`
and `send` and their messages, its proxy-headers middleware), Starlette's and FastAPI's middlewares,
routing and dependency solving, and the response object's own ASGI calls cost more CPU than the
poll's own checks (py-spy, docs/performance.md), and each layer is a frame more kept for every
connected agent. So the API's connections (api.connections) hand a POST to one of these routes,
its head parsed and its body read (bounded), to `FastLane.answer`, and write the answer it returns
themselves: a request, its endpoint, an answer.

What stays the same: the routes (still registered, so the OpenAPI document, any other method on
their paths and a request reaching the app some other way are FastAPI's), the body bound and its
413, the request timer's latency by route template and its access line, and the answer to every
error, from the handlers the app installed, looked up as FastAPI's own would. A bug's exception is
answered 500 by the connection, as uvicorn answers one.
"""

import inspect
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.types import Scope

from api.middleware.edge import too_large_detail
from api.middleware.request_timer import observe
from contract.wire import MAX_BODY_BYTES

Endpoint = Callable[[Request], Awaitable[Response]]
ErrorHandler = Callable[[Request, Any], Response | Awaitable[Response]]


class ControlPlaneApi(FastAPI):
    """FastAPI, with the fast lane its connections serve the fleet's routes by (set by api.app)."""

    fast_lane: "FastLane | None" = None


class _BodyRead(Request):
    """A request whose body the connection has read whole."""

    def __init__(self, scope: Scope, body: bytes) -> None:
        super().__init__(scope)
        self._read = body

    async def body(self) -> bytes:
        return self._read


class FastLane:
    """Answers POST on each of `routes` with its endpoint, timed and logged as the request timer
    does (`secrets` never in an access line); `on_success` is the edge gate's, called on every
    2xx answer. `limit` bounds a body, as the edge gate bounds an agent's."""

    def __init__(
        self,
        fastapi: FastAPI,
        routes: Sequence[APIRoute],
        *,
        secrets: Collection[str],
        on_success: Callable[[], None],
    ) -> None:
        self.fastapi = fastapi
        self.routes = {route.path.encode(): route for route in routes}  # by the request's URL
        self.secrets = secrets
        self.on_success = on_success
        self.limit = MAX_BODY_BYTES

    async def answer(self, scope: Scope, body: bytes | None) -> Response:
        """The answer to the request of `scope` (its `route` set), whose body is `body`, or
        passed the limit when None."""
        started = time.perf_counter()
        status = 500  # a bug's exception: the connection answers 500
        try:
            if body is None:
                response: Response = JSONResponse({"detail": too_large_detail(self.limit)}, 413)
            else:
                request = _BodyRead(scope, body)
                endpoint: Endpoint = scope["route"].endpoint
                try:  # awaited here, not in a helper: a held poll keeps every frame above it
                    response = await endpoint(request)
                except Exception as exc:
                    response = await self._error_answer(request, exc)
            status = response.status_code
            if 200 <= status < 300:
                self.on_success()
            return response
        finally:
            observe(scope, status, started, True, self.secrets)

    async def _error_answer(self, request: Request, exc: Exception) -> Response:
        handler = self._handler_for(exc)
        if handler is None:
            raise exc
        answer = handler(request, exc)
        return await answer if inspect.isawaitable(answer) else answer

    def _handler_for(self, exc: Exception) -> ErrorHandler | None:
        """The handler of the nearest class in the exception's MRO, as Starlette looks it up."""
        handlers = self.fastapi.exception_handlers
        for cls in type(exc).__mro__:
            if cls in handlers:
                handler: ErrorHandler = handlers[cls]
                return handler
        return None
