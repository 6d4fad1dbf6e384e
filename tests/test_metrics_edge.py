"""/metrics against what an attacker sends: label sets that do not grow with odd methods and
paths, one computation for many concurrent scrapes, a token, and a listen address of its own
(docs/configuration.md). A real API on a real PostgreSQL."""

import asyncio
import secrets
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from api.app import create_app
from api.metrics import Scraper
from api.metrics_listener import MetricsListener
from devstack.ports import free_port
from server.settings import ApiSettings
from store.pool import open_pool
from tests.conftest import LiveServer

ODD_METHODS = ("FOO", "PROPFIND", "BREW", "X-" + "A" * 40, "DELETE", "PATCH", "PUT")


def request_labels(text: str) -> set[tuple[str, str]]:
    return {
        (sample.labels["route"], sample.labels["method"])
        for family in text_string_to_metric_families(text)
        if family.name == "rollout_http_request_duration_seconds"
        for sample in family.samples
    }


ODD_ROUTES = frozenset({"/api/releases", "/health", "unmatched"})


async def odd_requests(client: httpx.AsyncClient, start: int, count: int) -> None:
    for n in range(start, start + count):
        method = ODD_METHODS[n % len(ODD_METHODS)] + ("" if n % 3 else str(n))
        path = ("/api/releases", "/health", f"/x{n}", f"/api/rollouts/r{n}/nope")[n % 4]
        await client.request(method, path)


async def test_odd_methods_and_paths_fold_into_bounded_labels(
    api: LiveServer, admin_client: httpx.AsyncClient
) -> None:
    await odd_requests(admin_client, 0, 60)
    await admin_client.get("/metrics")  # a scrape is counted once it is answered
    first = (await admin_client.get("/metrics")).text
    await odd_requests(admin_client, 60, 240)
    second = (await admin_client.get("/metrics")).text

    labels = request_labels(second)
    assert labels == request_labels(first)  # 240 more odd requests: not one more series
    routes = {route for route, _ in labels}
    # The registry is the process's: other tests' requests (DELETE /api/instances/{id}) are in
    # it too. These odd requests' routes are labelled with GET, POST or `other` only.
    methods = {method for route, method in labels if route in ODD_ROUTES}
    assert not any(route.startswith("/x") for route in routes)
    assert "unmatched" in routes
    assert methods <= {"GET", "POST", "other"}, methods
    assert ("/api/releases", "other") in labels  # a method the route does not serve
    assert ("/metrics", "GET") in labels


async def test_concurrent_scrapes_share_one_computation(database_url: str) -> None:
    pool = await open_pool(database_url, min_size=1, max_size=2)
    try:
        scraper = Scraper(pool)
        texts = await asyncio.gather(*(scraper.text() for _ in range(10)))
        assert len({id(text) for text in texts}) == 1  # the very same answer, made once
        again = await scraper.text()
        assert again is not texts[0]  # a scrape after that one reads anew
        assert b"rollout_jobs" in again
    finally:
        await pool.close()


@pytest.fixture
async def guarded(settings: ApiSettings) -> AsyncIterator[tuple[LiveServer, str]]:
    token = secrets.token_hex(16)
    configured = settings.model_copy(update={"api_metrics_token": SecretStr(token)})
    async with LiveServer(create_app(configured), free_port()) as server:
        yield server, token


async def test_a_metrics_token_is_required_when_set(guarded: tuple[LiveServer, str]) -> None:
    server, token = guarded
    async with httpx.AsyncClient(base_url=server.url) as client:
        missing = await client.get("/metrics")
        wrong = await client.get("/metrics", headers={"authorization": "Bearer " + "0" * 32})
        bare = await client.get("/metrics", headers={"authorization": token})
        right = await client.get("/metrics", headers={"authorization": f"Bearer {token}"})
    for refused in (missing, wrong, bare):
        assert refused.status_code == 401, refused.text
        assert refused.json()["detail"]
        assert refused.headers["www-authenticate"] == "Bearer"
    assert right.status_code == 200
    assert "rollout_jobs" in right.text


async def raw_exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()


async def test_metrics_on_their_own_address_only(settings: ApiSettings) -> None:
    port, token = free_port(), secrets.token_hex(16)
    configured = settings.model_copy(
        update={"api_metrics_address": f"127.0.0.1:{port}", "api_metrics_token": SecretStr(token)}
    )
    async with (
        LiveServer(create_app(configured), free_port()) as server,
        httpx.AsyncClient() as client,
    ):
        assert (await client.get(f"{server.url}/metrics")).status_code == 404
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        refused = await client.get(metrics_url)
        assert refused.status_code == 401, refused.text
        scraped = await client.get(metrics_url, headers={"authorization": f"Bearer {token}"})
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain")
        assert "rollout_jobs" in scraped.text
        elsewhere = await raw_exchange(port, b"GET /api/releases HTTP/1.1\r\nhost: x\r\n\r\n")
        assert elsewhere.startswith(b"HTTP/1.1 404 ")
        posted = await raw_exchange(port, b"POST /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        assert posted.startswith(b"HTTP/1.1 405 ")
    # Stopped with the API: nothing listens there any more.
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_the_metrics_listener_closes_slow_and_endless_heads(database_url: str) -> None:
    pool = await open_pool(database_url, min_size=1, max_size=2)
    port = free_port()
    listener = MetricsListener(f"127.0.0.1:{port}", Scraper(pool), None, head_timeout=0.5)
    await listener.start()
    try:
        # Nothing sent: closed, unanswered, once the head's time is up.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), 30) == b""
        writer.close()
        # Headers without end: closed at the size limit, long before they end.
        endless = b"GET /metrics HTTP/1.1\r\n" + b"x-filler: " + b"a" * 20_000
        assert await raw_exchange(port, endless) == b""
        ok = await raw_exchange(port, b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and b"rollout_jobs" in ok
    finally:
        await listener.stop()
        await pool.close()


async def test_db_gauges_of_a_scrape_are_read_now(
    api: LiveServer, admin_client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """Sharing a scrape in flight never serves an old one: the next scrape reads PostgreSQL."""
    before = (await admin_client.get("/metrics")).text
    assert 'rollout_rollouts{status="running"}' not in before
    await db.execute(
        "INSERT INTO releases VALUES ('rel', '1.0.0', 'stable', 'abcdef0', false, null,"
        " '2026-01-01T00:00:00Z', 'sig');"
        "INSERT INTO rollouts (id, workflow_id, manifest_id, version, channel, batch_size,"
        " auto_advance, bake_seconds, max_failures, job_timeout_seconds, status, created_by)"
        " VALUES ('r', 'rollout-r', 'rel', '1.0.0', 'stable', 1, false, 0, 0, 60, 'running',"
        " 'admin')"
    )
    after = (await admin_client.get("/metrics")).text
    assert 'rollout_rollouts{status="running"} 1.0' in after
