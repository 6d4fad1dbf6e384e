"""audit_log: who did what to which subject, and when. Append-only."""

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


async def for_subject(conn: asyncpg.Connection | asyncpg.Pool, subject: str) -> list[AuditEntry]:
    rows = await conn.fetch(
        "SELECT id, at, actor, action, subject, detail FROM audit_log"
        " WHERE subject = $1 ORDER BY id",
        subject,
    )
    return [AuditEntry(**dict(r)) for r in rows]
