"""A 503 from the control plane says how long to wait; the agent waits at least that long, but
only when the answer is the control plane's own (signed), and never longer than its backoff cap."""

import json
import secrets

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agent.network import HttpxHttp
from agent.timing import retry_delay
from agent.transport import RequestFailed, Signer, signed_post
from contract.signing import sign
from contract.wire import PollResponse

SECRET = secrets.token_hex(16)


def busy_plane(*, signed: bool, retry_after: str) -> Starlette:
    async def unavailable(request: Request) -> Response:
        nonce = json.loads(await request.body())["nonce"]
        body = json.dumps({"detail": "PostgreSQL is unavailable", "nonce": nonce}).encode()
        headers = {"retry-after": retry_after}
        if signed:
            headers["x-cp-signature"] = sign(SECRET, body)
        return Response(body, 503, headers=headers, media_type="application/json")

    return Starlette(routes=[Route("/api/updates/next", unavailable, methods=["POST"])])


async def poll(app: Starlette) -> RequestFailed:
    transport = httpx.ASGITransport(app=app)
    http = HttpxHttp(httpx.AsyncClient(transport=transport, base_url="http://plane"))
    fields = {"channel": "stable", "currentVersion": "1.0.0"}
    with pytest.raises(RequestFailed) as failed:
        await signed_post(http, Signer("web-1", SECRET), "/api/updates/next", fields, PollResponse)
    await http.aclose()
    return failed.value


@pytest.mark.parametrize(
    ("signed", "header", "honoured"),
    [(True, "30", 30.0), (False, "30", None), (True, "soon", None)],
)
async def test_only_a_signed_retry_after_is_honoured(
    signed: bool, header: str, honoured: float | None
) -> None:
    failed = await poll(busy_plane(signed=signed, retry_after=header))
    assert (failed.status, failed.final, failed.retry_after) == (503, False, honoured)


def test_the_wait_is_at_least_retry_after_and_at_most_the_cap() -> None:
    assert retry_delay(1, initial=1, maximum=60, retry_after=30) >= 30
    assert retry_delay(1, initial=1, maximum=10, retry_after=3600) == 10
    assert retry_delay(1, initial=1, maximum=60, retry_after=None) <= 1
