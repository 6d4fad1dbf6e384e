"""httpcore's sockets on asyncio's own streams, for every agent request.

httpcore drives asyncio through anyio, which wraps each socket read and write in a cancel scope
and an extra pass of the event loop: a fifth to a third of an agent's CPU per request on a
keep-alive connection (`benchmarks/agent_http.py`, docs/performance.md). The agent runs on
asyncio only, so it talks to it directly; timeouts and errors map to the same httpcore (so
httpx) exceptions.
"""

import asyncio
import select
import socket
import ssl
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx


@contextmanager
def _mapped(timeout_error: type[Exception], os_error: type[Exception]) -> Iterator[None]:
    try:
        yield
    except TimeoutError as exc:
        raise timeout_error(exc) from exc
    except OSError as exc:  # ssl.SSLError included
        raise os_error(exc) from exc


def _readable(sock: socket.socket | None) -> bool:
    """Whether an idle kept-alive connection has something to read, which means the server
    closed it: httpcore then opens a new one instead of sending on it. `poll`, not `select`: a
    simulated fleet holds file descriptors past select's 1,024."""
    if sock is None or sock.fileno() < 0:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class AsyncioStream(httpcore.AsyncNetworkStream):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        with _mapped(httpcore.ReadTimeout, httpcore.ReadError):
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        with _mapped(httpcore.WriteTimeout, httpcore.WriteError):
            async with asyncio.timeout(timeout):
                self._writer.write(buffer)
                await self._writer.drain()

    async def aclose(self) -> None:
        self._writer.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        with _mapped(httpcore.ConnectTimeout, httpcore.ConnectError):
            async with asyncio.timeout(timeout):
                await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        return self

    def get_extra_info(self, info: str) -> Any:
        extra = self._writer.get_extra_info
        match info:
            case "ssl_object" | "socket":
                return extra(info)
            case "client_addr":
                return extra("sockname")
            case "server_addr":
                return extra("peername")
            case "is_readable":
                return _readable(extra("socket"))
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        local = None if local_address is None else (local_address, 0)
        with _mapped(httpcore.ConnectTimeout, httpcore.ConnectError):
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port, local_addr=local)
        for option in socket_options or ():
            writer.get_extra_info("socket").setsockopt(*option)
        return AsyncioStream(reader, writer)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        with _mapped(httpcore.ConnectTimeout, httpcore.ConnectError):
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_unix_connection(path)
        for option in socket_options or ():
            writer.get_extra_info("socket").setsockopt(*option)
        return AsyncioStream(reader, writer)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def http_transport(
    *, limits: httpx.Limits, verify: ssl.SSLContext | bool = True
) -> httpx.AsyncHTTPTransport:
    """httpx's own transport, its connection pool on `AsyncioBackend`. httpx takes no network
    backend, so it is set on httpcore's pool, which does (tests/test_agent_sockets.py fails if a
    new httpx moves it)."""
    transport = httpx.AsyncHTTPTransport(verify=verify, limits=limits)
    transport._pool._network_backend = AsyncioBackend()
    return transport


def agent_transport(limits: httpx.Limits) -> httpx.AsyncHTTPTransport | None:
    """The agent's transport: `http_transport`, unless the environment names a proxy
    (`HTTPS_PROXY` and the like), which httpx honours only on a transport it builds itself (None:
    the client builds it, on anyio)."""
    return None if urllib.request.getproxies() else http_transport(limits=limits)
