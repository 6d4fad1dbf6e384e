"""The access log keeps every request but the routine poll, which /metrics counts instead."""

import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from prometheus_client import REGISTRY
from pydantic import SecretStr

from api.app import create_app
from api.middleware.access_log import ACCESS_LOGGER
from devstack.ports import free_port
from server.settings import ApiSettings
from tests.agent_requests import poll_body, post_signed
from tests.conftest import LiveServer

TOKEN = secrets.token_hex(16)


def _idle_polls_counted() -> float:
    return REGISTRY.get_sample_value("rollout_agent_polls_total", {"outcome": "idle"}) or 0.0


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextmanager
def _access_lines() -> Iterator[list[str]]:
    access = logging.getLogger(ACCESS_LOGGER)
    level = access.level
    lines = _Lines()
    access.addHandler(lines)
    access.setLevel(logging.INFO)  # LiveServer logs warnings only
    try:
        yield lines.lines
    finally:
        access.removeHandler(lines)
        access.setLevel(level)


async def test_answered_polls_leave_no_access_line_but_are_counted(
    settings: ApiSettings,
) -> None:
    configured = settings.model_copy(update={"control_plane_agent_token": SecretStr(TOKEN)})
    async with (
        LiveServer(create_app(configured), free_port()) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as client,
    ):
        with _access_lines() as access_lines:
            counted_before = _idle_polls_counted()
            for _ in range(3):
                polled = await post_signed(client, "/api/updates/next", poll_body("web-1"), TOKEN)
                assert polled.status_code == 200
            refused = await post_signed(client, "/api/updates/next", poll_body("web-1"), "wrong")
            assert refused.status_code == 401
            assert (await client.get("/health/live")).status_code == 200

    assert [line.split('"', 1)[1] for line in access_lines] == [
        'POST /api/updates/next HTTP/1.1" 401',
        'GET /health/live HTTP/1.1" 200',
    ]
    assert _idle_polls_counted() - counted_before == 3


async def test_a_refused_poll_through_a_local_proxy_names_the_agent_it_forwards(
    settings: ApiSettings,
) -> None:
    """uvicorn trusts X-Forwarded-For from 127.0.0.1 by default (FORWARDED_ALLOW_IPS): the line
    names the agent behind the proxy, for polls as for every other request."""
    configured = settings.model_copy(update={"control_plane_agent_token": SecretStr(TOKEN)})
    forwarded = {"x-forwarded-for": "203.0.113.7"}
    async with (
        LiveServer(create_app(configured), free_port()) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30, headers=forwarded) as client,
    ):
        with _access_lines() as access_lines:
            refused = await post_signed(client, "/api/updates/next", poll_body("web-1"), "wrong")
            assert refused.status_code == 401
            assert (await client.get("/health/live")).status_code == 200

    assert [line.split(" - ", 1)[0] for line in access_lines] == ["203.0.113.7:0"] * 2
