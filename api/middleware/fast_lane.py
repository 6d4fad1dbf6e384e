"""The fleet's requests served straight from the middleware stack, past FastAPI's routing.

Every agent polls every few seconds, and most polls find nothing: polls (and reports, on every
batch's critical path) are by far the most frequent requests. FastAPI's handling around a route
(exception middleware, exit stacks, route matching through included routers, dependency
solving, which parses cookies even for a route without parameters) cost about as much CPU as
the poll's own checks (py-spy, docs/performance.md). The agent routes take the bare request and
need none of it, so this middleware calls them directly.

What stays the same: the routes (still registered, so the OpenAPI document and any other method
on their paths are FastAPI's), the middlewares outside this one (the edge gate's size limit, the
request timer, labelled with the route's template), and the answer to every error, from the
handlers the app installed, looked up as FastAPI's own would.
"""

import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[Response]]
ErrorHandler = Callable[[Request, Any], Response | Awaitable[Response]]


class FastLane:
    """Serves POST on each of `routes` with its endpoint; everything else goes on to the app."""

    def __init__(self, app: ASGIApp, *, fastapi: FastAPI, routes: Sequence[APIRoute]) -> None:
        self.app = app
        self.fastapi = fastapi
        self.routes = {route.path: route for route in routes}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope["route"] = route  # for the request timer's label
        request = Request(scope, receive)
        endpoint: Endpoint = route.endpoint
        try:
            response = await endpoint(request)
        except Exception as exc:
            handler = self._handler_for(exc)
            if handler is None:
                raise  # a bug: Starlette's outermost middleware answers 500
            answer = handler(request, exc)
            response = await answer if inspect.isawaitable(answer) else answer
        await response(scope, receive, send)

    def _handler_for(self, exc: Exception) -> ErrorHandler | None:
        """The handler of the nearest class in the exception's MRO, as Starlette looks it up."""
        handlers = self.fastapi.exception_handlers
        for cls in type(exc).__mro__:
            if cls in handlers:
                handler: ErrorHandler = handlers[cls]
                return handler
        return None
