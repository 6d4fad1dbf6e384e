"""The API's connections are bounded before any request reaches the app (api/connections.py):
a request must arrive whole in time, its head is capped, and a process serves so many
connections. Raw sockets, as an attacker's would be."""

import asyncio
import contextlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import NamedTuple

import httpx
import pytest
from pydantic import SecretStr

from api.app import create_app
from devstack.ports import free_port
from server.settings import ApiSettings
from tests.agent_requests import assert_signed_by, hmac_hex, poll_body, post_signed
from tests.conftest import LiveServer

TIMEOUT_SECONDS = 1.0
MAX_HEADER_BYTES = 4096
MAX_CONNECTIONS = 20
CEILING_SECONDS = 30  # generous: a loaded machine answers late, never early


@contextlib.asynccontextmanager
async def _serving(settings: ApiSettings, timeout: float) -> AsyncIterator[LiveServer]:
    bounded = settings.model_copy(
        update={"api_request_timeout_seconds": timeout, "api_max_header_bytes": MAX_HEADER_BYTES}
    )
    app = create_app(bounded)
    async with LiveServer(app, free_port(), limit_concurrency=MAX_CONNECTIONS) as live:
        yield live


@pytest.fixture
async def server(settings: ApiSettings) -> AsyncIterator[LiveServer]:
    async with _serving(settings, TIMEOUT_SECONDS) as live:
        yield live


async def _connect(server: LiveServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    port = int(server.url.rsplit(":", 1)[1])
    return await asyncio.open_connection("127.0.0.1", port)


async def _closed_after(reader: asyncio.StreamReader) -> tuple[bytes, float]:
    """Everything the server sent until it closed, and how long that took."""
    started = time.monotonic()
    async with asyncio.timeout(CEILING_SECONDS):
        try:
            sent = await reader.read()
        except ConnectionResetError:  # closed with our bytes unread: a reset, not an end
            sent = b""
    return sent, time.monotonic() - started


async def _healthy(server: LiveServer) -> bool:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        return (await client.get("/health/live")).status_code == 200


async def test_a_connection_that_sends_nothing_is_closed_after_the_request_timeout(
    server: LiveServer,
) -> None:
    reader, writer = await _connect(server)
    sent, seconds = await _closed_after(reader)
    writer.close()
    assert sent == b""  # nobody asked anything: nothing to answer
    assert seconds >= TIMEOUT_SECONDS * 0.9
    assert await _healthy(server)


async def test_headers_sent_a_byte_at_a_time_do_not_keep_a_connection_open(
    server: LiveServer,
) -> None:
    reader, writer = await _connect(server)
    head = b"GET /health/live HTTP/1.1\r\nhost: x\r\n" + b"x-slow: " + b"a" * 200

    async def trickle() -> int:
        count = 0
        for byte in head:
            writer.write(bytes([byte]))
            try:
                await writer.drain()
            except ConnectionError:
                break
            count += 1
            await asyncio.sleep(0.02)
        return count

    trickling = asyncio.create_task(trickle())
    sent, seconds = await _closed_after(reader)
    trickling.cancel()
    writer.close()
    assert sent == b""
    assert seconds < CEILING_SECONDS
    assert not trickling.done() or trickling.result() < len(head)  # closed while trickling


async def test_a_request_with_oversized_headers_is_refused_431_before_it_is_buffered(
    server: LiveServer,
) -> None:
    reader, writer = await _connect(server)
    answer = asyncio.create_task(_closed_after(reader))
    writer.write(b"GET /health/live HTTP/1.1\r\nhost: x\r\nx-big: ")
    chunk = b"a" * 65536
    pushed = 0
    with contextlib.suppress(ConnectionError):
        while not answer.done() and pushed < 48 * 1024 * 1024:  # one 48 MiB header, as the attack
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0)  # the answer is read as it comes
            pushed += len(chunk)
    sent, _ = await answer
    writer.close()
    status, _, rest = sent.partition(b"\r\n")
    assert status == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert json.loads(rest.split(b"\r\n\r\n", 1)[1]) == {
        "detail": f"request headers are larger than {MAX_HEADER_BYTES} bytes (API_MAX_HEADER_BYTES)"
    }
    assert pushed < 12 * 1024 * 1024  # answered long before the whole header was sent
    assert await _healthy(server)


async def test_many_small_headers_past_the_limit_are_refused_431(server: LiveServer) -> None:
    reader, writer = await _connect(server)
    headers = b"".join(b"x-h%d: %s\r\n" % (n, b"v" * 40) for n in range(200))  # ~10 KiB
    writer.write(b"GET /health/live HTTP/1.1\r\nhost: x\r\n" + headers + b"\r\n")
    answer, _ = await _closed_after(reader)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 431 ")


async def test_headers_within_the_limit_are_served(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        answered = await client.get("/health/live", headers={"x-fill": "v" * 3000})
    assert answered.status_code == 200


async def test_connections_past_the_limit_are_answered_503_until_some_close(
    settings: ApiSettings,
) -> None:
    # Idle connections are closed after the request timeout: long enough here to hold them.
    async with _serving(settings, timeout=CEILING_SECONDS) as server:
        idle = [await _connect(server) for _ in range(MAX_CONNECTIONS)]
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            refused = await client.get("/health/live")
            assert refused.status_code == 503
            for _, writer in idle:
                writer.close()
            async with asyncio.timeout(CEILING_SECONDS):
                while (await client.get("/health/live")).status_code != 200:
                    await asyncio.sleep(0.05)  # no event: the server sees the closes in its time


async def test_pipelined_requests_are_answered_in_order(server: LiveServer) -> None:
    reader, writer = await _connect(server)
    ask = b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n"
    writer.write(ask + ask + b"GET /health/live HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    answers, _ = await _closed_after(reader)
    writer.close()
    assert answers.count(b"HTTP/1.1 200 OK\r\n") == 3


# --- the fleet's requests, which the connections hand to the fast lane themselves ----------

FLEET_TOKEN = secrets.token_hex(16)


@pytest.fixture
async def fleet_server(settings: ApiSettings) -> AsyncIterator[LiveServer]:
    with_token = settings.model_copy(update={"control_plane_agent_token": SecretStr(FLEET_TOKEN)})
    async with _serving(with_token, CEILING_SECONDS) as live:
        yield live


def _signed_poll(instance_id: str, *, http: str = "1.1", head: str = "") -> tuple[bytes, bytes]:
    """A poll's head (ending in its blank line) and body, as a third-party agent would send."""
    poll = poll_body(instance_id)
    body = json.dumps(poll).encode()
    return (
        f"POST /api/updates/next HTTP/{http}\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nx-agent-signature: {hmac_hex(FLEET_TOKEN, body)}\r\n"
        f"{head}\r\n"
    ).encode(), body


class _Answer(NamedTuple):
    status: int
    headers: dict[bytes, bytes]
    body: bytes


def _answers(stream: bytes) -> list[_Answer]:
    """The HTTP/1.1 answers in `stream`, in order; each has a content-length (as the API's do)."""
    answers = []
    while stream:
        head, _, rest = stream.partition(b"\r\n\r\n")
        status_line, *lines = head.split(b"\r\n")
        headers = dict(line.lower().split(b": ", 1) for line in lines)
        length = int(headers.get(b"content-length", b"0"))
        answers.append(_Answer(int(status_line.split(b" ")[1]), headers, rest[:length]))
        stream = rest[length:]
    return answers


def _assert_signed_poll_answer(answer: _Answer, body: bytes) -> None:
    assert answer.status == 200, answer
    assert hmac.compare_digest(
        answer.headers[b"x-cp-signature"].decode(), hmac_hex(FLEET_TOKEN, answer.body)
    )
    assert json.loads(answer.body) == {"job": None, "nonce": json.loads(body)["nonce"]}


async def test_pipelined_polls_and_other_requests_are_answered_in_order(
    fleet_server: LiveServer,
) -> None:
    first_head, first = _signed_poll("web-1")
    last_head, last = _signed_poll("web-2", head="connection: close\r\n")
    reader, writer = await _connect(fleet_server)
    writer.write(
        first_head + first + b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n" + last_head + last
    )
    stream, _ = await _closed_after(reader)
    writer.close()
    polled, health, closing = _answers(stream)
    _assert_signed_poll_answer(polled, first)
    assert (health.status, json.loads(health.body)) == (200, {"status": "ok"})
    _assert_signed_poll_answer(closing, last)
    assert closing.headers[b"connection"] == b"close"


async def test_a_poll_expecting_100_continue_is_told_to_send_its_body(
    fleet_server: LiveServer,
) -> None:
    head, body = _signed_poll("web-1", head="expect: 100-continue\r\nconnection: close\r\n")
    reader, writer = await _connect(fleet_server)
    writer.write(head)
    async with asyncio.timeout(CEILING_SECONDS):
        interim = await reader.readuntil(b"\r\n\r\n")
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(body)
    stream, _ = await _closed_after(reader)
    writer.close()
    (answer,) = _answers(stream)
    _assert_signed_poll_answer(answer, body)


async def test_an_http_1_0_poll_is_answered_and_its_connection_closed(
    fleet_server: LiveServer,
) -> None:
    head, body = _signed_poll("web-1", http="1.0")
    reader, writer = await _connect(fleet_server)
    writer.write(head + body)
    stream, _ = await _closed_after(reader)  # no keep-alive in HTTP/1.0: the server closes
    writer.close()
    (answer,) = _answers(stream)
    _assert_signed_poll_answer(answer, body)
    assert answer.headers[b"connection"] == b"close"


async def test_a_poll_on_another_spelling_of_its_url_is_answered_alike(
    fleet_server: LiveServer,
) -> None:
    """Only the route's exact URL takes the fast lane; with a query it reaches FastAPI's routing,
    and the agent cannot tell."""
    poll = poll_body("web-1")
    async with httpx.AsyncClient(base_url=fleet_server.url, timeout=CEILING_SECONDS) as client:
        answer = await post_signed(client, "/api/updates/next?from=proxy", poll, FLEET_TOKEN)
    assert assert_signed_by(answer, FLEET_TOKEN, poll["nonce"]) == {
        "job": None,
        "nonce": poll["nonce"],
    }
