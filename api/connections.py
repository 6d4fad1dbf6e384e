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

uvicorn builds the protocol itself, in every worker process, from an import path (`PROTOCOL`):
the limits are set once per process by `configure`, from the settings the app is built with.
"""

import asyncio
import collections
import json
import resource
from typing import Any, ClassVar, Literal, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server.settings import ApiSettings

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


class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request and a cap on its head."""

    # In slots: uvicorn's own attributes fill the instance dict's shared keys, and five more made
    # each connection's dict 1.3 KB larger.
    __slots__ = (
        "_deadline",
        "_head_done",
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
        super().on_headers_complete()
        # Made just now, not set or waited on yet: nothing of the request's body is parsed.
        _lazy(self.cycle, "message_event")

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._stop_deadline()
        if not self._refused:
            super().on_message_complete()

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
