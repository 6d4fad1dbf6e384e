"""The agent's sockets on plain asyncio (agent/network.py): what httpx did on anyio, it still does,
against a real HTTP/1.1 server on a real socket, over TLS too."""

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from agent.network import AsyncioBackend, agent_transport, http_transport
from devstack.ports import free_port
from tests.tls_terminator import make_certificates

# Serves HTTP on loopback sockets (tests/tiers.py).
pytestmark = pytest.mark.servers

LIMITS = httpx.Limits(keepalive_expiry=4.0)


@dataclass
class Server:
    """Answers `GET /hello` with `hello`, keeps the connection open unless the path is
    `/hello-then-close` (closed after answering without saying so, as an idle timeout does),
    and never answers `/silent`."""

    connections: int = 0
    targets: list[bytes] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                path = head.split(b" ", 2)[1]
                self.targets.append(path)
                if path == b"/silent":
                    await reader.read()
                    return
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
                await writer.drain()
                if path == b"/hello-then-close":
                    return
        except asyncio.IncompleteReadError:
            return
        finally:
            writer.close()
            self.closed.set()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[ssl.SSLContext | None], Awaitable[str]]]:
    """Starts a `Server`, plain or TLS; returns its base URL. `serve.server` is the last one."""
    servers: list[asyncio.Server] = []

    async def start(tls: ssl.SSLContext | None) -> str:
        port = free_port()
        handler = Server()
        start.server = handler  # type: ignore[attr-defined]
        servers.append(await asyncio.start_server(handler.serve, "127.0.0.1", port, ssl=tls))
        return f"{'https' if tls else 'http'}://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.fixture
def certificates(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, a client context trusting only the test CA)."""
    files = make_certificates(tmp_path)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(files.server_cert, files.server_key)
    return server, ssl.create_default_context(cafile=files.ca)


async def test_requests_go_through_the_asyncio_backend_and_reuse_the_connection(
    serve: Callable[[ssl.SSLContext | None], Awaitable[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    connects: list[tuple[str, int]] = []
    original = AsyncioBackend.connect_tcp

    async def counted(self: AsyncioBackend, host: str, port: int, **kwargs: object) -> object:
        connects.append((host, port))
        return await original(self, host, port, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(AsyncioBackend, "connect_tcp", counted)
    url = await serve(None)
    async with httpx.AsyncClient(base_url=url, transport=http_transport(limits=LIMITS)) as http:
        answers = [await http.get("/hello") for _ in range(3)]
    assert [(a.status_code, a.text) for a in answers] == [(200, "hello")] * 3
    assert len(connects) == 1
    assert serve.server.connections == 1  # type: ignore[attr-defined]


async def test_a_kept_alive_connection_the_server_closed_is_replaced_not_failed(
    serve: Callable[[ssl.SSLContext | None], Awaitable[str]],
) -> None:
    url = await serve(None)
    async with httpx.AsyncClient(base_url=url, transport=http_transport(limits=LIMITS)) as http:
        assert (await http.get("/hello-then-close")).text == "hello"
        await serve.server.closed.wait()  # type: ignore[attr-defined]
        assert (await http.get("/hello")).text == "hello"
    assert serve.server.connections == 2  # type: ignore[attr-defined]


async def test_tls_is_verified_against_the_given_ca(
    serve: Callable[[ssl.SSLContext | None], Awaitable[str]],
    certificates: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_tls, trusting = certificates
    url = await serve(server_tls)
    transport = http_transport(limits=LIMITS, verify=trusting)
    async with httpx.AsyncClient(base_url=url, transport=transport) as http:
        answer = await http.get("/hello")
    assert (answer.status_code, answer.text) == (200, "hello")
    assert answer.extensions["network_stream"].get_extra_info("ssl_object") is not None

    async with httpx.AsyncClient(base_url=url, transport=http_transport(limits=LIMITS)) as http:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await http.get("/hello")


async def test_timeouts_and_refusals_are_httpx_errors(
    serve: Callable[[ssl.SSLContext | None], Awaitable[str]],
) -> None:
    url = await serve(None)
    transport = http_transport(limits=LIMITS)
    async with httpx.AsyncClient(base_url=url, transport=transport, timeout=0.3) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get("/silent")
    nobody = f"http://127.0.0.1:{free_port()}"
    async with httpx.AsyncClient(base_url=nobody, transport=http_transport(limits=LIMITS)) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("/hello")


async def test_the_agent_keeps_honouring_a_proxy_named_in_its_environment(
    serve: Callable[[ssl.SSLContext | None], Awaitable[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = await serve(None)
    monkeypatch.setenv("HTTP_PROXY", proxy)
    transport = agent_transport(LIMITS)
    async with httpx.AsyncClient(
        base_url="http://control-plane.invalid", transport=transport
    ) as http:
        assert (await http.get("/hello")).text == "hello"
    assert serve.server.targets == [b"http://control-plane.invalid/hello"]  # type: ignore[attr-defined]
