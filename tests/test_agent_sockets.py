"""The agent's own HTTP/1.1 (agent/network.py, agent/http11.py) against a real server on a real
socket, over TLS too: what httpx did for it, it still does."""

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import uvloop

from agent.network import DirectHttp, control_plane_http
from devstack.ports import free_port
from tests.tls_terminator import make_certificates

# Serves HTTP on loopback sockets (tests/tiers.py).
pytestmark = pytest.mark.servers

HELLO = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
# How the server answers each path; `/silent` gets no answer.
ANSWERS = {
    b"/hello": HELLO,
    b"/hello-then-close": HELLO,  # then closed without saying so, as an idle timeout does
    b"/chunked": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    b"3\r\nhel\r\n2;ext=1\r\nlo\r\n0\r\nx-trailer: 1\r\n\r\n",
    b"/to-the-end": b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nhello",  # then closed
}
Serve = Callable[[ssl.SSLContext | None], Awaitable[str]]


@dataclass
class Server:
    connections: int = 0
    targets: list[bytes] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                target = head.split(b" ", 2)[1]
                self.targets.append(target)
                length = next(
                    int(line.split(b":")[1])
                    for line in head.lower().split(b"\r\n")
                    if line.startswith(b"content-length:")
                )
                self.bodies.append(await reader.readexactly(length))
                path = b"/" + target.rpartition(b"/")[2]  # the base URL's path or a proxy's URL
                if path not in ANSWERS:
                    await reader.read()
                    return
                writer.write(ANSWERS[path])
                await writer.drain()
                if path in (b"/hello-then-close", b"/to-the-end"):
                    return
        except asyncio.IncompleteReadError:
            return
        finally:
            writer.close()
            self.closed.set()


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
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


def direct(url: str, *, timeout: float = 5.0, tls: ssl.SSLContext | None = None) -> DirectHttp:
    return DirectHttp(url, timeout=timeout, keepalive_expiry=4.0, tls=tls)


async def test_requests_reuse_one_connection_and_carry_their_bodies(serve: Serve) -> None:
    url = await serve(None)
    http = direct(f"{url}/base/")
    answers = [await http.post("/hello", b'{"n":%d}' % n, {"x-n": str(n)}) for n in range(3)]
    await http.aclose()
    assert [(a.status, a.content) for a in answers] == [(200, b"hello")] * 3
    assert answers[0].headers == {"content-length": "5"}
    server = serve.server  # type: ignore[attr-defined]
    assert server.connections == 1
    assert server.targets == [b"/base/hello"] * 3
    assert server.bodies == [b'{"n":0}', b'{"n":1}', b'{"n":2}']


def test_the_same_on_uvloop_as_the_simulator_runs_it() -> None:
    async def exchange() -> tuple[list[bytes], int]:
        server = Server()
        port = free_port()
        listening = await asyncio.start_server(server.serve, "127.0.0.1", port)
        http = direct(f"http://127.0.0.1:{port}")
        answers = [await http.post("/hello", b"{}", {}) for _ in range(2)]
        await http.aclose()
        listening.close()
        return [a.content for a in answers], server.connections

    assert uvloop.run(exchange()) == ([b"hello", b"hello"], 1)


async def test_a_kept_alive_connection_the_server_closed_is_replaced_not_failed(
    serve: Serve,
) -> None:
    url = await serve(None)
    http = direct(url)
    assert (await http.post("/hello-then-close", b"{}", {})).content == b"hello"
    await serve.server.closed.wait()  # type: ignore[attr-defined]
    assert (await http.post("/hello", b"{}", {})).content == b"hello"
    await http.aclose()
    assert serve.server.connections == 2  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", ["/chunked", "/to-the-end"])
async def test_chunked_answers_and_answers_ended_by_closing_are_read_whole(
    serve: Serve, path: str
) -> None:
    url = await serve(None)
    http = direct(url)
    answers = [await http.post(path, b"{}", {}) for _ in range(2)]
    await http.aclose()
    assert [a.content for a in answers] == [b"hello", b"hello"]
    reused = path == "/chunked"
    assert serve.server.connections == (1 if reused else 2)  # type: ignore[attr-defined]


async def test_tls_is_verified_against_the_given_ca(
    serve: Serve, certificates: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_tls, trusting = certificates
    url = await serve(server_tls)
    http = direct(url, tls=trusting)
    assert (await http.post("/hello", b"{}", {})).content == b"hello"
    await http.aclose()

    http = direct(url)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        await http.post("/hello", b"{}", {})


async def test_timeouts_and_refusals_are_httpx_errors(serve: Serve) -> None:
    url = await serve(None)
    with pytest.raises(httpx.ReadTimeout):
        await direct(url, timeout=0.3).post("/silent", b"{}", {})
    with pytest.raises(httpx.ReadTimeout):  # a request's own timeout, as a held poll has
        await direct(url, timeout=60).post("/silent", b"{}", {}, timeout=0.3)
    with pytest.raises(httpx.ConnectError):
        await direct(f"http://127.0.0.1:{free_port()}").post("/hello", b"{}", {})


async def test_the_agent_keeps_honouring_a_proxy_named_in_its_environment(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = await serve(None)
    monkeypatch.setenv("HTTP_PROXY", proxy)
    http = control_plane_http("http://control-plane.invalid", timeout=5, keepalive_expiry=4)
    assert (await http.post("/hello", b"{}", {})).content == b"hello"
    await http.aclose()
    assert serve.server.targets == [b"http://control-plane.invalid/hello"]  # type: ignore[attr-defined]
