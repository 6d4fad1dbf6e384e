"""The API's connections, bounded before any request reaches the app (docs/protocol.md §7).

uvicorn leaves three doors open that cost nothing to push: a connection that never sends a
request stays open for good (its keep-alive timer starts only after a first answer), headers sent
a byte at a time keep it open as long as they trickle, and headers of any size are buffered
before the app sees a byte of them. With the common 1,024 open files, a few hundred such sockets
from anyone stopped admin and agent requests alike. So every API process, through this protocol:

- closes a connection whose request (head and body) is not complete `API_REQUEST_TIMEOUT_SECONDS`
  after the connection opened or after the request's first byte: no answer, nobody is there;
- answers 431 and closes once a request's head passes `API_MAX_HEADER_BYTES`, before buffering
  more of it;
- answers 503 (uvicorn's `limit_concurrency`) to requests on connections past
  `API_MAX_CONNECTIONS`, by default the open-files limit less a reserve for the process's own
  files (its database pool, its listener, its logs).

It also keeps uvicorn's per-connection and per-request asyncio Events lazy (`_LazyEvent`): a
held poll waits on neither, and their empty deques were 1.5 KiB of each held agent's memory.

It also writes each answer with one send: uvicorn writes a response's head and its body apart,
two system calls where one does, and on polls and reports they were a quarter of the API's CPU
(py-spy, `benchmarks/poll_throughput.py`).

It serves the fleet's requests itself (`_LaneCycle`): a POST to an agent route, on a URL exactly
the route's, is read whole and handed to the app's fast lane (api.fast_lane), and its answer
written in one piece, with no ASGI cycle between. The rest of uvicorn's protocol stays as it is:
pipelining, keep-alive, graceful shutdown, `limit_concurrency` (a request past it is uvicorn's
503), and proxy headers (the client an access line names). Any other request is uvicorn's.

uvicorn builds the protocol itself, in every worker process, from an import path (`PROTOCOL`):
the limits are set once per process by `configure`, from the settings the app is built with.
"""

import asyncio
import collections
import json
import resource
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

from uvicorn.config import Config
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from api.middleware.edge import declares_too_much
from server.settings import ApiSettings

if TYPE_CHECKING:
    from fastapi.routing import APIRoute

    from api.fast_lane import FastLane

PROTOCOL = "api.connections:BoundedHttpTools"
# An ASGI extension in each request's scope: {"future": done when the connection is lost}, so a
# held poll learns of its agent hanging up without a task of its own watching `receive`.
CONNECTION_LOST = "rollout.connection_lost"

# Open files an API process keeps for itself beside its connections.
RESERVED_FILES = 200
# After a 431 the client may still be sending its head: what it sends is read and dropped this
# long, so that it reads the answer rather than a reset.
LINGER_SECONDS = 2.0
_TOO_LARGE_DETAIL = "request headers are larger than {limit} bytes (API_MAX_HEADER_BYTES)"


def max_connections(settings: ApiSettings) -> int:
    """`API_MAX_CONNECTIONS`, or what the process's open-files limit leaves room for."""
    if settings.api_max_connections is not None:
        return settings.api_max_connections
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 100_000
    return max(16, soft - RESERVED_FILES)


def configure(settings: ApiSettings) -> None:
    """The limits of this process's connections (api.app calls it as it builds the app)."""
    BoundedHttpTools.request_timeout_seconds = settings.api_request_timeout_seconds
    BoundedHttpTools.max_header_bytes = settings.api_max_header_bytes


def _answer_431(limit: int) -> bytes:
    body = json.dumps({"detail": _TOO_LARGE_DETAIL.format(limit=limit)}).encode()
    head = (
        "HTTP/1.1 431 Request Header Fields Too Large\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


class _CoalescingTransport:
    """Writes made in one turn of the event loop go out as one, at the end of the turn."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._pending is None:
            self._pending = [data]
            self._loop.call_soon(self._flush)
        else:
            self._pending.append(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(b"".join(pending))

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _LazyEvent(asyncio.Event):
    """An asyncio.Event whose waiters' deque (760 bytes empty) is made on its first wait.
    uvicorn gives every connection one (its flow control) and every request another (its body),
    and on a held poll neither is ever waited on: 1.5 KiB of every held agent's."""

    def __init__(self) -> None:  # not Event's: it makes the deque
        self._waiters: Any = ()
        self._value = False

    async def wait(self) -> Literal[True]:
        if self.is_set():  # uvicorn reads a body already in by waiting on its set event
            return True
        if isinstance(self._waiters, tuple):
            self._waiters = collections.deque()
        return await super().wait()


def _lazy(owner: object, name: str) -> None:
    """Replace `owner.name`, an Event nobody waits on yet, by a lazy one in the same state; left
    as it is should a later uvicorn not have it."""
    event = getattr(owner, name, None)
    if type(event) is asyncio.Event:
        lazy = _LazyEvent()
        if event.is_set():
            lazy.set()
        setattr(owner, name, lazy)


class _Pipeline(list[Any]):
    """uvicorn's queue of pipelined requests, as rare as they are: an empty deque is 760 bytes, an
    empty list 56, and every connection has one."""

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


async def _nothing(*_: object) -> None:
    return None


class _Lane:
    """What a process's connections serve the fleet's routes with: the app's fast lane, and the
    proxy-headers rewrite uvicorn would have run first (None when proxy headers are off)."""

    __slots__ = ("fast_lane", "proxy")

    def __init__(self, fast_lane: "FastLane", proxy: ProxyHeadersMiddleware | None) -> None:
        self.fast_lane = fast_lane
        self.proxy = proxy


# One per uvicorn config, found on its first connection (None: the app has no fast lane).
_LANES: "weakref.WeakKeyDictionary[Config, _Lane | None]" = weakref.WeakKeyDictionary()


def _lane_of(config: Config, app: object) -> _Lane | None:
    if config in _LANES:
        return _LANES[config]
    lane = None
    if not config.root_path:  # the routes' URLs are the paths the app declares
        while app is not None:
            fast_lane = getattr(app, "fast_lane", None)
            if fast_lane is not None:
                proxy = None
                if config.proxy_headers:
                    proxy = ProxyHeadersMiddleware(_nothing, config.forwarded_allow_ips)
                lane = _Lane(fast_lane, proxy)
                break
            app = getattr(app, "app", None)  # through uvicorn's own wrappers
    _LANES[config] = lane
    return lane


class _LaneCycle:
    """One request for the fast lane, in place of uvicorn's request cycle: what the protocol
    reads and sets of a cycle (`response_complete`, `disconnected`, `keep_alive`,
    `message_event`, `on_response`, `run_asgi`) it has too, so pipelining, keep-alive and
    graceful shutdown stay uvicorn's. The body is read whole, bounded, then handed to the lane;
    its answer leaves in one write."""

    __slots__ = (
        "body",
        "default_headers",
        "disconnected",
        "expect_100_continue",
        "flow",
        "keep_alive",
        "lane",
        "logger",
        "message_event",
        "more_body",
        "on_response",
        "response_complete",
        "scope",
        "too_large",
        "transport",
    )

    def __init__(
        self,
        lane: _Lane,
        scope: dict[str, Any],
        protocol: "BoundedHttpTools",
        *,
        keep_alive: bool,
        too_large: bool,
    ) -> None:
        self.lane = lane
        self.scope = scope
        self.transport = protocol.transport
        self.flow: FlowControl = protocol.flow
        self.logger = protocol.logger
        self.default_headers: list[tuple[bytes, bytes]] = protocol.server_state.default_headers
        self.on_response: Callable[[], None] = protocol.on_response_complete
        self.keep_alive = keep_alive
        self.expect_100_continue = protocol.expect_100_continue
        self.too_large = too_large
        self.body = bytearray()
        self.more_body = True
        self.message_event: asyncio.Event = _LazyEvent()
        self.disconnected = False
        self.response_complete = False

    def take(self, chunk: bytes) -> None:
        """A piece of the body, as the parser reads it."""
        if self.response_complete or self.too_large:
            return  # answered (413) already: the rest is read and dropped
        self.body += chunk
        if len(self.body) > self.lane.fast_lane.limit:
            self.too_large = True
            self.body = bytearray()
            self.message_event.set()

    def complete(self) -> None:
        if not self.response_complete:
            self.more_body = False
            self.message_event.set()

    async def run_asgi(self, _app: object) -> None:
        """Named as uvicorn's cycle's, which the protocol starts (or queues behind a pipelined
        request) as a task of the server's: a graceful shutdown waits for it."""
        try:
            if self.more_body and not self.too_large:
                if self.expect_100_continue and not self.transport.is_closing():
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                self.flow.resume_reading()
                await self.message_event.wait()
            if self.disconnected:
                return  # the client left before its request was whole: nobody to answer
            if self.lane.proxy is not None:
                await self.lane.proxy(self.scope, _nothing, _nothing)  # type: ignore[arg-type]
            body = None if self.too_large else bytes(self.body)
            self.body = bytearray()
            response = await self.lane.fast_lane.answer(self.scope, body)
            self._write(response.status_code, response.raw_headers, response.body)
        except BaseException as exc:
            self.logger.error("Exception in ASGI application\n", exc_info=exc)
            if not self.response_complete:
                self.keep_alive = False
                self._write(500, _SERVER_ERROR_HEADERS, b"Internal Server Error")
        finally:
            self.on_response = _nothing_done

    def _write(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes | memoryview
    ) -> None:
        if self.disconnected:
            return  # as uvicorn's `send`: the answer has nowhere to go
        content: list[bytes | memoryview] = [STATUS_LINE[status]]
        for name, value in (*self.default_headers, *headers):
            content += (name, b": ", value, b"\r\n")
        if not self.keep_alive:
            content.append(b"connection: close\r\n")
        content += (b"\r\n", body)
        self.transport.write(b"".join(content))
        self.response_complete = True
        if not self.keep_alive:
            self.transport.close()
        self.on_response()


def _nothing_done() -> None:
    return None


_SERVER_ERROR_HEADERS = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", b"21"),
]


class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request and a cap on its head."""

    # In slots: uvicorn's own attributes fill the instance dict's shared keys, and five more made
    # each connection's dict 1.3 KB larger.
    __slots__ = (
        "_deadline",
        "_head_done",
        "_lane",
        "_lost",
        "_lost_extension",
        "_parsed",
        "_refused",
        "_unparsed",
    )

    request_timeout_seconds: ClassVar[float] = 10.0
    max_header_bytes: ClassVar[int] = 16 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pipeline = _Pipeline()  # type: ignore[assignment]
        self._lane = _lane_of(self.config, self.app)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        _lazy(self.flow, "_is_writable_event")
        self.transport = cast(asyncio.Transport, _CoalescingTransport(transport, self.loop))
        self._head_done = False  # the current request's head was parsed whole
        self._unparsed = 0  # bytes read while a head was incomplete (one header may be huge)
        self._parsed = 0  # the head's parts parsed so far (a head read in one go)
        self._refused = False
        self._deadline: asyncio.TimerHandle | None = None
        self._lost: asyncio.Future[None] = self.loop.create_future()
        self._lost_extension: dict[object, object] = {"future": self._lost}  # one for its requests
        self._start_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        if not self._lost.done():
            self._lost.set_result(None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._deadline is None:  # the first byte of a later request on a kept-alive connection
            self._start_deadline()
        super().data_received(data)
        if not self._head_done and not self._refused:
            self._unparsed += len(data)
            if self._unparsed > self.max_header_bytes:
                self._refuse_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {CONNECTION_LOST: self._lost_extension}
        self._head_done = False
        self._parsed = 0

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)  # with ": " and the line's end
        if not self._refused:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._head_done = True
        self._unparsed = 0
        route = self._fast_route()
        if route is not None:
            self._start_lane_cycle(route)
            return
        super().on_headers_complete()
        # Made just now, not set or waited on yet: nothing of the request's body is parsed.
        _lazy(self.cycle, "message_event")

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        if type(self.cycle) is _LaneCycle:
            self.cycle.take(body)
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._stop_deadline()
        if self._refused:
            return
        if type(self.cycle) is _LaneCycle:
            self.cycle.complete()
        else:
            super().on_message_complete()

    def _fast_route(self) -> "APIRoute | None":
        """The fast lane's route for this request, if it takes it: a POST on a route's URL
        exactly, within the concurrency limit (past it, uvicorn answers 503)."""
        lane = self._lane
        if lane is None or self.parser.get_method() != b"POST" or self.parser.should_upgrade():
            return None
        route = lane.fast_lane.routes.get(self.url)
        limit = self.limit_concurrency
        if route is None or (
            limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit)
        ):
            return None
        return route

    def _start_lane_cycle(self, route: "APIRoute") -> None:
        assert self._lane is not None
        http_version = self.parser.get_http_version()
        # What the lane, the request and the access line read, in place of uvicorn's scope: ten
        # keys fit a dict's smaller table, and a held poll keeps its scope.
        scope: dict[str, Any] = {
            "type": "http",
            "http_version": http_version,
            "method": "POST",
            "path": route.path,
            "headers": self.headers,
            "client": self.client,
            "app": self._lane.fast_lane.fastapi,
            "route": route,
            "extensions": self.scope["extensions"],
            "state": {},
        }
        self.scope = cast(Any, scope)
        cycle = _LaneCycle(
            self._lane,
            scope,
            self,
            keep_alive=http_version != "1.0" and self.parser.should_keep_alive(),
            too_large=declares_too_much(self.headers, self._lane.fast_lane.limit),
        )
        existing = self.cycle
        self.cycle = cycle  # type: ignore[assignment]
        if existing is None or existing.response_complete:
            self._start_asgi_task(cycle, None)  # type: ignore[arg-type]
        else:  # pipelined behind a request still being answered
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, None))  # type: ignore[arg-type]

    def _count_head(self, size: int) -> None:
        self._parsed += size
        if self._parsed > self.max_header_bytes:
            self._refuse_head()

    def _refuse_head(self) -> None:
        if self._refused:
            return
        self._refused = True
        self._stop_deadline()
        if self.transport.is_closing():
            return
        self.transport.write(_answer_431(self.max_header_bytes))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def _start_deadline(self) -> None:
        self._deadline = self.loop.call_later(self.request_timeout_seconds, self._too_slow)

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()
