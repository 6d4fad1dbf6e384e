"""Signed webhooks on real servers: a receiver verifies every delivery (Standard Webhooks); one
that is down for a while gets the event once it is back; two API processes deliver each event
once; a failed job is an event; a delivery that failed for good is redelivered on request."""

import json
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.app import create_app
from contract.webhooks import verify
from devstack.ports import free_port
from server.settings import ApiSettings
from tests.conftest import LiveServer
from tests.fixtures_temporal import eventually
from tests.test_admin_cli import rollout_cli


class Receiver:
    """Keeps what it was sent, and whether each signature checks. Checked when asked, with the
    secret known then: the endpoint's own `webhook.added` may arrive before its creator has read
    the secret from the answer that created it."""

    def __init__(self) -> None:
        self.secret = ""
        self.deliveries: list[tuple[str, int, bytes, str]] = []  # id, timestamp, body, signature

    async def hook(self, request: Request) -> Response:
        headers = request.headers
        self.deliveries.append(
            (
                headers["webhook-id"],
                int(headers["webhook-timestamp"]),
                await request.body(),
                headers["webhook-signature"],
            )
        )
        return Response(status_code=204)

    @property
    def received(self) -> list[tuple[str, dict, bool]]:
        """(id, payload, whether its signature checks) of each delivery."""
        return [
            (message_id, json.loads(body), verify(self.secret, message_id, at, body, signature))
            for message_id, at, body, signature in self.deliveries
        ]

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])


def _fast(settings: ApiSettings) -> ApiSettings:
    return settings.model_copy(
        update={"webhook_retry_base_seconds": 0.2, "webhook_max_attempts": 4}
    )


async def _admin(stack: AsyncExitStack, settings: ApiSettings) -> httpx.AsyncClient:
    server = await stack.enter_async_context(LiveServer(create_app(_fast(settings)), free_port()))
    token = settings.control_plane_admin_token.get_secret_value()
    return await stack.enter_async_context(
        httpx.AsyncClient(base_url=server.url, headers={"x-cp-admin-token": token}, timeout=30)
    )


@pytest.fixture
async def admin(settings: ApiSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with AsyncExitStack() as stack:
        yield await _admin(stack, settings)


async def _add(admin: httpx.AsyncClient, url: str, receiver: Receiver, *events: str) -> str:
    added = await admin.post("/api/webhooks", json={"url": url, "events": list(events)})
    assert added.status_code == 201, added.text
    receiver.secret = added.json()["secret"]
    assert receiver.secret.startswith("whsec_")
    listed = (await admin.get("/api/webhooks")).json()
    assert all("secret" not in endpoint for endpoint in listed)  # shown once
    return added.json()["id"]


async def _deliveries(admin: httpx.AsyncClient, **filters: str) -> list[dict]:
    return (await admin.get("/api/webhooks/deliveries", params=filters)).json()


async def test_a_receiver_that_is_down_gets_the_event_signed_once_it_is_back(
    admin: httpx.AsyncClient,
) -> None:
    receiver, port = Receiver(), free_port()
    await _add(admin, f"http://127.0.0.1:{port}/hook", receiver, "fleet.frozen")
    frozen = await admin.post("/api/freeze", json={"reason": "webhook test", "channel": "beta"})
    assert frozen.status_code == 200, frozen.text

    async def tried_twice() -> list[dict] | None:
        found = await _deliveries(admin)
        return found if found and found[0]["attempts"] >= 2 else None

    pending = (await eventually(tried_twice))[0]
    assert pending["status"] == "pending" and "ConnectError" in pending["lastError"]
    async with LiveServer(receiver.app(), port):
        await eventually(lambda: _deliveries(admin, status="delivered"))
    [(message_id, payload, good)] = receiver.received
    assert good and message_id == pending["id"]
    assert payload["type"] == "fleet.frozen"
    assert payload["data"]["detail"] == {"reason": "webhook test"}
    assert payload["data"]["subject"] == "freeze:beta"


async def test_two_api_processes_deliver_each_event_once(settings: ApiSettings) -> None:
    receiver, port = Receiver(), free_port()
    async with AsyncExitStack() as stack:
        first = await _admin(stack, settings)
        await _admin(stack, settings)  # a second API process on the same database
        await stack.enter_async_context(LiveServer(receiver.app(), port))
        await _add(first, f"http://127.0.0.1:{port}/hook", receiver, "*")
        for n in range(10):
            await first.post("/api/freeze", json={"reason": f"r{n}", "channel": "beta"})

        async def all_delivered() -> bool:
            found = await _deliveries(first)
            return len(found) >= 10 and all(d["status"] == "delivered" for d in found)

        await eventually(all_delivered)
    ids = [message_id for message_id, _, _ in receiver.received]
    assert len(ids) == len(set(ids)) >= 10
    assert all(good for _, _, good in receiver.received)


async def test_a_failed_job_is_an_event_and_a_failed_delivery_can_be_sent_again(
    admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    receiver = Receiver()
    port = free_port()
    await _add(admin, f"http://127.0.0.1:{port}/hook", receiver, "job.failed")
    await db.execute(
        "INSERT INTO job_reports (job_id, instance_id, status, step, message, nonce)"
        " VALUES ('j-1', 'web-1', 'failed', 'smoke', 'smoke test exited 1', $1)",
        secrets.token_hex(16),
    )
    [failed] = await eventually(lambda: _deliveries(admin, status="failed"))
    assert failed["attempts"] == 4  # webhook_max_attempts, each one refused
    async with LiveServer(receiver.app(), port):
        again = await admin.post(f"/api/webhooks/deliveries/{failed['id']}/redeliver")
        assert again.status_code == 200, again.text
        await eventually(lambda: _deliveries(admin, status="delivered"))
    [(_, payload, good)] = receiver.received
    assert good and payload["type"] == "job.failed"
    assert payload["data"] == {
        "jobId": "j-1",
        "instanceId": "web-1",
        "status": "failed",
        "step": "smoke",
        "message": "smoke test exited 1",
    }


async def test_bad_endpoints_are_refused(admin: httpx.AsyncClient) -> None:
    for body, problem in [
        ({"url": "ftp://x/hook", "events": ["*"]}, "url"),
        ({"url": "http://x/hook", "events": ["not an event"]}, "an event like"),
        ({"url": "http://x/hook", "events": []}, "events"),
    ]:
        refused = await admin.post("/api/webhooks", json=body)
        assert refused.status_code == 422, refused.text
        assert problem in refused.json()["detail"]
    assert (await admin.get("/api/webhooks")).json() == []
    assert (await admin.delete("/api/webhooks/" + "0" * 32)).status_code == 404


async def test_the_webhook_commands(settings: ApiSettings) -> None:
    async with LiveServer(create_app(settings), free_port()) as server:
        code, out, err = await rollout_cli(
            server, settings, "webhooks", "add", "--url", "http://127.0.0.1:9/hook",
            "--event", "fleet.frozen", "--event", "job.failed",
        )  # fmt: skip
        assert code == 0, err
        assert "secret (shown once; the receiver verifies with it): whsec_" in out
        code, out, _ = await rollout_cli(server, settings, "webhooks", "list", "--json")
        [endpoint] = json.loads(out)
        assert endpoint["events"] == ["fleet.frozen", "job.failed"]
        code, out, _ = await rollout_cli(server, settings, "webhooks", "deliveries")
        assert code == 0
        code, out, _ = await rollout_cli(server, settings, "webhooks", "remove", endpoint["id"])
        assert (code, out.strip()) == (0, f"removed {endpoint['id']}")
