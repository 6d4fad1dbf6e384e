"""Webhook endpoints and their deliveries, in domain terms (admin; audited). The deliveries are
made by the database as the changes are written and sent by services/webhook_dispatcher.py."""

import uuid

import asyncpg

from contract.webhooks import new_secret
from services.errors import NotFound
from store import audit, webhooks
from store.webhooks import Delivery, Endpoint

# What an endpoint may ask for: the audit actions (docs/protocol.md lists them) and failed jobs.
EVENT_EXAMPLES = ("rollout.status_changed", "fleet.frozen", "job.failed", "job.rolled_back", "*")


async def add(
    pool: asyncpg.Pool, *, url: str, events: list[str], actor: str
) -> tuple[Endpoint, str]:
    """The endpoint and its secret: shown this once, as the receiver needs it to verify."""
    secret = new_secret()
    async with pool.acquire() as conn, conn.transaction():
        endpoint = await webhooks.add_endpoint(
            conn, uuid.uuid4().hex, url=url, secret=secret, events=events, actor=actor
        )
        await audit.record(
            conn,
            actor=actor,
            action="webhook.added",
            subject=f"webhook:{endpoint.id}",
            detail={"url": url, "events": events},
        )
    return endpoint, secret


async def remove(pool: asyncpg.Pool, endpoint_id: str, *, actor: str) -> None:
    async with pool.acquire() as conn, conn.transaction():
        if not await webhooks.remove_endpoint(conn, endpoint_id):
            raise NotFound(f"webhook {endpoint_id} not found")
        await audit.record(
            conn, actor=actor, action="webhook.removed", subject=f"webhook:{endpoint_id}"
        )


async def redeliver(pool: asyncpg.Pool, delivery_id: str, *, actor: str) -> Delivery:
    async with pool.acquire() as conn, conn.transaction():
        again = await webhooks.redeliver(conn, delivery_id)
        if again is None:
            raise NotFound(f"delivery {delivery_id} not found")
        await audit.record(
            conn,
            actor=actor,
            action="webhook.redelivered",
            subject=f"webhook:{again.endpoint_id}",
            detail={"delivery": delivery_id},
        )
        return again
