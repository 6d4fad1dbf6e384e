"""audit_log: who did what to which subject, and when. Append-only."""

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg
from pydantic import BaseModel


class AuditEntry(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    subject: str
    detail: dict[str, Any]


async def record(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    actor: str,
    action: str,
    subject: str,
    detail: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO audit_log (actor, action, subject, detail) VALUES ($1, $2, $3, $4)",
        actor,
        action,
        subject,
        detail or {},
    )


async def record_many(
    conn: asyncpg.Connection | asyncpg.Pool, subject: str, entries: Sequence[Mapping[str, Any]]
) -> None:
    """Entries (`actor`, `action`, `detail`) about one subject in one statement, in the order
    given (ids ascend): the workflow's read-model writes carry a few at a time, on every
    batch's critical path."""
    if not entries:
        return
    await conn.execute(
        "INSERT INTO audit_log (actor, action, subject, detail)"
        " SELECT e->>'actor', e->>'action', $1, e->'detail'"
        " FROM jsonb_array_elements($2::jsonb) WITH ORDINALITY AS t(e, n) ORDER BY n",
        subject,
        list(entries),
    )


async def for_subject(conn: asyncpg.Connection | asyncpg.Pool, subject: str) -> list[AuditEntry]:
    rows = await conn.fetch(
        "SELECT id, at, actor, action, subject, detail FROM audit_log"
        " WHERE subject = $1 ORDER BY id",
        subject,
    )
    return [AuditEntry(**dict(r)) for r in rows]
