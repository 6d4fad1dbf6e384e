"""One HTTP/1.1 connection as an asyncio protocol: it writes a request and parses the answer as
its bytes arrive (a body sized by `content-length`, chunked, or read to the connection's end),
with no task, stream or timeout object of its own per request: one timer."""

import asyncio
from dataclasses import dataclass
from typing import cast

import httpx

MAX_HEAD_BYTES = 64 * 1024
_NO_BODY = frozenset({204, 304})


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case; a repeated header's values joined by ", "
    content: bytes

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300


class _Malformed(Exception):
    pass


def _head(raw: bytes) -> tuple[int, dict[str, str], bool]:
    """Status, headers and whether the server keeps the connection (HTTP/1.1 and no `close`)."""
    status_line, *lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise _Malformed(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise _Malformed(f"malformed header line: {line[:80]!r}")
        key, value = name.lower(), value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    keeps = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
    return int(code), headers, keeps


class Connection(asyncio.Protocol):
    """One request at a time: `exchange` writes it and waits for the answer; `reusable` says
    afterwards whether the next may follow on this connection."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.reusable = False
        self.idle_since = 0.0
        self._answer: asyncio.Future[Answer] | None = None
        self._buffer = bytearray()
        self._status = 0
        self._headers: dict[str, str] = {}
        self._keeps = False
        # Once the head is read: the body's length, "chunked", or "close" (read to the end).
        self._framing: int | str | None = None
        self._body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    async def exchange(self, request: bytes, timeout: float) -> Answer:
        assert self.transport is not None
        self.reusable = False
        self._framing = None
        self._body.clear()
        answer = self._answer = self._loop.create_future()
        self.transport.write(request)
        timer = self._loop.call_later(
            timeout, self._fail, httpx.ReadTimeout, f"no answer within {timeout:g} s"
        )
        try:
            return await answer
        finally:
            timer.cancel()

    def data_received(self, data: bytes) -> None:
        if self._answer is None or self._answer.done():
            self.close()  # nothing was asked: the server is closing or confused
            return
        self._buffer += data
        try:
            self._parse()
        except (_Malformed, ValueError) as exc:
            self._fail(httpx.RemoteProtocolError, str(exc))

    def eof_received(self) -> bool:
        if self._framing == "close" and self._answer is not None and not self._answer.done():
            self._body += self._buffer
            self._buffer.clear()
            self._settle()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if exc is None:
            self._fail(
                httpx.RemoteProtocolError,
                "the server closed the connection before its answer was complete",
            )
        else:
            self._fail(httpx.ReadError, str(exc))

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, error: type[httpx.TransportError], reason: str) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(error(reason))
            self.close()

    def _parse(self) -> None:
        if self._framing is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    raise _Malformed(f"answer head over {MAX_HEAD_BYTES} bytes")
                return
            status, headers, keeps = _head(bytes(self._buffer[:end]))
            del self._buffer[: end + 4]
            if 100 <= status < 200:  # informational: the real answer follows
                self._parse()
                return
            self._status, self._headers, self._keeps = status, headers, keeps
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self._framing = "chunked"
            elif "content-length" in headers:
                length = headers["content-length"]
                if not length.isdigit():
                    raise _Malformed(f"content-length is not a length: {length[:80]!r}")
                self._framing = int(length)
            elif status in _NO_BODY:
                self._framing = 0
            else:
                self._framing = "close"
        if self._framing == "chunked":
            self._read_chunks()
        elif isinstance(self._framing, int) and len(self._buffer) >= self._framing:
            self._body += self._buffer[: self._framing]
            del self._buffer[: self._framing]
            self._settle()

    def _read_chunks(self) -> None:
        """Moves whole chunks from the buffer to the body; the last (size 0) settles."""
        while (line_end := self._buffer.find(b"\r\n")) >= 0:
            size = int(bytes(self._buffer[:line_end]).split(b";")[0], 16)
            if size < 0:
                raise _Malformed("negative chunk size")
            if size == 0:  # then trailers, if any, and an empty line
                end = self._buffer.find(b"\r\n\r\n", line_end)
                if end >= 0:
                    del self._buffer[: end + 4]
                    self._settle()
                return
            start = line_end + 2
            if len(self._buffer) < start + size + 2:
                return
            if self._buffer[start + size : start + size + 2] != b"\r\n":
                raise _Malformed("chunk not followed by CRLF")
            self._body += self._buffer[start : start + size]
            del self._buffer[: start + size + 2]

    def _settle(self) -> None:
        assert self._answer is not None
        self.reusable = self._keeps and self._framing != "close" and not self._buffer
        self._answer.set_result(Answer(self._status, self._headers, bytes(self._body)))
        self._buffer.clear()
