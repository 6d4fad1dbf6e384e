"""The agent's HTTP: one kind of request (a POST of a small signed body to the control plane) on
keep-alive HTTP/1.1 connections, spoken on asyncio's protocol callbacks.

Through httpx, each request built and tracked what the agent never uses (URL merging, cookies,
auth and redirect flows, h11's state machine, anyio's locks and cancel scopes): about two thirds
of a simulated agent's CPU per request (`benchmarks/agent_http.py`, docs/performance.md). A
proxy named in the environment (`HTTPS_PROXY` and the like) is still left to httpx, which
honours it. Either way failures are httpx's exceptions, so callers and logs name them alike.
"""

import asyncio
import select
import ssl
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import httpx

from agent.http11 import Answer, Connection
from runtime.build import package_version

USER_AGENT = f"rollout-agent/{package_version()}"


class ControlPlaneHttp(Protocol):
    """What the agent's signed exchange (agent/transport.py) sends its bytes through."""

    async def post(
        self, path: str, content: bytes, headers: Mapping[str, str], timeout: float | None = None
    ) -> Answer: ...

    async def aclose(self) -> None: ...


def _readable(transport: asyncio.BaseTransport) -> bool:
    """Whether an idle kept-alive connection has something to read, which means the server
    closed it (its end may not have reached the callbacks yet): a new one is opened instead of
    sending on it. `poll`, not `select`: a simulated fleet holds descriptors past select's 1,024."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.fileno() < 0:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


@dataclass(frozen=True)
class _Origin:
    host: str
    port: int
    tls: ssl.SSLContext | None
    prefix: str  # the base URL's path, before each request's
    head: bytes  # the request headers every request carries


def _origin(base_url: str, tls: ssl.SSLContext | None) -> _Origin:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {base_url}")
    secure = parts.scheme == "https"
    authority = parts.netloc.rpartition("@")[2]
    head = f"host: {authority}\r\nuser-agent: {USER_AGENT}\r\n".encode()
    return _Origin(
        host=parts.hostname,
        port=parts.port or (443 if secure else 80),
        tls=(tls or httpx.create_ssl_context()) if secure else None,
        prefix=parts.path.rstrip("/"),
        head=head,
    )


class DirectHttp:
    """Keep-alive connections to one control plane, one request in flight on each; an idle one
    is reused only while the server surely keeps it (`keepalive_expiry`)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        keepalive_expiry: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._origin = _origin(base_url, tls)
        self._timeout = timeout
        self._expiry = keepalive_expiry
        self._idle: list[Connection] = []
        self._open: set[Connection] = set()

    async def post(
        self, path: str, content: bytes, headers: Mapping[str, str], timeout: float | None = None
    ) -> Answer:
        seconds = self._timeout if timeout is None else timeout
        fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        request = b"".join(
            (
                f"POST {self._origin.prefix}{path} HTTP/1.1\r\n".encode(),
                self._origin.head,
                f"content-length: {len(content)}\r\n{fields}\r\n".encode(),
                content,
            )
        )
        connection = self._reusable() or await self._connect(seconds)
        try:
            answer = await connection.exchange(request, seconds)
        except BaseException:
            self._discard(connection)
            raise
        if connection.reusable:
            connection.idle_since = asyncio.get_running_loop().time()
            self._idle.append(connection)
        else:
            self._discard(connection)
        return answer

    def _reusable(self) -> Connection | None:
        now = asyncio.get_running_loop().time()
        while self._idle:
            connection = self._idle.pop()
            transport = connection.transport
            fresh = now - connection.idle_since < self._expiry
            if fresh and transport is not None and not connection.lost and not _readable(transport):
                return connection
            self._discard(connection)
        return None

    async def _connect(self, timeout: float) -> Connection:
        origin = self._origin
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(
                    lambda: Connection(loop),
                    origin.host,
                    origin.port,
                    ssl=origin.tls,
                    server_hostname=origin.host if origin.tls else None,
                )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"no connection within {timeout:g} s") from exc
        except OSError as exc:  # ssl.SSLError included
            raise httpx.ConnectError(str(exc)) from exc
        self._open.add(connection)
        return connection

    def _discard(self, connection: Connection) -> None:
        connection.close()
        self._open.discard(connection)

    async def aclose(self) -> None:
        for connection in list(self._open):
            self._discard(connection)
        self._idle.clear()


class HttpxHttp:
    """Through an httpx client: the agent's way through a proxy the environment names, which
    httpx honours (`NO_PROXY` included)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def post(
        self, path: str, content: bytes, headers: Mapping[str, str], timeout: float | None = None
    ) -> Answer:
        response = await self._client.post(
            path,
            content=content,
            headers=headers,
            timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
        )
        return Answer(response.status_code, dict(response.headers), response.content)

    async def aclose(self) -> None:
        await self._client.aclose()


def control_plane_http(
    base_url: str, *, timeout: float, keepalive_expiry: float, tls: ssl.SSLContext | None = None
) -> ControlPlaneHttp:
    """`DirectHttp`, unless the environment names a proxy (`HttpxHttp`)."""
    if urllib.request.getproxies():
        limits = httpx.Limits(keepalive_expiry=keepalive_expiry)
        headers = {"user-agent": USER_AGENT}
        client = httpx.AsyncClient(
            base_url=base_url, timeout=timeout, limits=limits, headers=headers
        )
        return HttpxHttp(client)
    return DirectHttp(base_url, timeout=timeout, keepalive_expiry=keepalive_expiry, tls=tls)
