"""Nonces are remembered for their window and no longer, in PostgreSQL shared by API processes."""

from datetime import UTC, datetime, timedelta

import asyncpg

from contract.wire import ReportRequest
from store import jobs, nonces


async def _claim(
    db: asyncpg.Connection, instance_id: str, nonce: str, expires_at: datetime
) -> bool:
    """As a report claims its nonce: in the statement that reads its job (here, none)."""
    report = ReportRequest(
        instanceId=instance_id,
        sentAt=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        nonce=nonce,
        jobId="no-such-job",
        status="succeeded",
        step="health",
    )
    [claimed] = await jobs.claim_reports(db, [jobs.SentReport(report, expires_at)])
    assert (claimed.job, claimed.stored) == (None, False)
    return claimed.fresh


async def test_a_nonce_is_refused_until_it_expires_then_swept(db: asyncpg.Connection) -> None:
    now = datetime.now(UTC)
    assert await _claim(db, "web-1", "n" * 16, now + timedelta(minutes=5))
    assert not await _claim(db, "web-1", "n" * 16, now + timedelta(minutes=5))
    assert await _claim(db, "web-2", "n" * 16, now + timedelta(minutes=5))
    assert await _claim(db, "web-1", "o" * 16, now - timedelta(seconds=1))

    assert await nonces.delete_expired(db) == 1
    remaining = await db.fetch("SELECT instance_id, nonce FROM agent_nonces ORDER BY instance_id")
    assert [(r["instance_id"], r["nonce"]) for r in remaining] == [
        ("web-1", "n" * 16),
        ("web-2", "n" * 16),
    ]
