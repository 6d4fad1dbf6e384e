"""webhook_endpoints and webhook_deliveries: who wants which events, and each delivery (the
outbox the database fills in the transaction of the change: migration 0013)."""

from datetime import datetime
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel

DeliveryStatus = Literal["pending", "delivered", "failed"]
OUTBOX_CHANNEL = "webhook_outbox"  # notified when deliveries are added
_ENDPOINT = "id, url, events, created_by, created_at"
_DELIVERY = (
    "id, endpoint_id, event, payload, status, attempts, next_attempt_at, last_status, last_error,"
    " created_at, delivered_at"
)


class Endpoint(BaseModel):
    id: str
    url: str
    events: list[str]
    created_by: str
    created_at: datetime


class Delivery(BaseModel):
    id: str
    endpoint_id: str
    event: str
    payload: dict[str, Any]
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


class Due(BaseModel):
    """A delivery taken to be sent now, with what sending it needs."""

    id: str
    url: str
    secret: str
    payload: dict[str, Any]
    attempts: int


async def add_endpoint(
    conn: asyncpg.Connection | asyncpg.Pool,
    endpoint_id: str,
    *,
    url: str,
    secret: str,
    events: list[str],
    actor: str,
) -> Endpoint:
    row = await conn.fetchrow(
        "INSERT INTO webhook_endpoints (id, url, secret, events, created_by)"
        f" VALUES ($1, $2, $3, $4, $5) RETURNING {_ENDPOINT}",
        endpoint_id,
        url,
        secret,
        events,
        actor,
    )
    return Endpoint.model_validate(dict(row))


async def endpoints(conn: asyncpg.Connection | asyncpg.Pool) -> list[Endpoint]:
    rows = await conn.fetch(f"SELECT {_ENDPOINT} FROM webhook_endpoints ORDER BY created_at, id")
    return [Endpoint.model_validate(dict(r)) for r in rows]


async def remove_endpoint(conn: asyncpg.Connection | asyncpg.Pool, endpoint_id: str) -> bool:
    status = await conn.execute("DELETE FROM webhook_endpoints WHERE id = $1", endpoint_id)
    return status != "DELETE 0"


async def deliveries(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    status: DeliveryStatus | None,
    endpoint_id: str | None,
    limit: int,
) -> list[Delivery]:
    rows = await conn.fetch(
        f"SELECT {_DELIVERY} FROM webhook_deliveries"
        " WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR endpoint_id = $2)"
        " ORDER BY created_at DESC, id LIMIT $3",
        status,
        endpoint_id,
        limit,
    )
    return [Delivery.model_validate(dict(r)) for r in rows]


async def redeliver(conn: asyncpg.Connection | asyncpg.Pool, delivery_id: str) -> Delivery | None:
    """Sent again from now, its attempts counted anew."""
    row = await conn.fetchrow(
        "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = now(),"
        f" delivered_at = NULL WHERE id = $1 RETURNING {_DELIVERY}",
        delivery_id,
    )
    if row is not None:
        await conn.execute("SELECT pg_notify($1, '')", OUTBOX_CHANNEL)
    return Delivery.model_validate(dict(row)) if row else None


async def take_due(
    conn: asyncpg.Connection | asyncpg.Pool, *, limit: int, lease_seconds: float
) -> list[Due]:
    """Deliveries due now, leased to this sender: another (another API process) skips them, and
    takes them again only if this one never says how they went."""
    rows = await conn.fetch(
        "UPDATE webhook_deliveries d SET attempts = d.attempts + 1,"
        " next_attempt_at = now() + make_interval(secs => $2)"
        " FROM webhook_endpoints e WHERE e.id = d.endpoint_id AND d.id IN ("
        " SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= now()"
        " ORDER BY next_attempt_at, id LIMIT $1 FOR UPDATE SKIP LOCKED)"
        " RETURNING d.id, e.url, e.secret, d.payload, d.attempts",
        limit,
        lease_seconds,
    )
    return [Due.model_validate(dict(r)) for r in rows]


async def delivered(conn: asyncpg.Connection | asyncpg.Pool, delivery_id: str, status: int) -> None:
    await conn.execute(
        "UPDATE webhook_deliveries SET status = 'delivered', delivered_at = now(),"
        " last_status = $2, last_error = NULL WHERE id = $1",
        delivery_id,
        status,
    )


async def failed_attempt(
    conn: asyncpg.Connection | asyncpg.Pool,
    delivery_id: str,
    *,
    status: int | None,
    error: str,
    retry_in_seconds: float | None,
) -> None:
    """Tried again after `retry_in_seconds`, or, with None, given up (`failed`)."""
    await conn.execute(
        "UPDATE webhook_deliveries SET last_status = $2, last_error = $3,"
        " status = CASE WHEN $4::float8 IS NULL THEN 'failed' ELSE 'pending' END,"
        " next_attempt_at = now() + make_interval(secs => coalesce($4::float8, 0))"
        " WHERE id = $1",
        delivery_id,
        status,
        error[:1000],
        retry_in_seconds,
    )
