"""Nonces are remembered for their window and no longer, in PostgreSQL shared by API processes."""

from datetime import UTC, datetime, timedelta

import asyncpg

from store import nonces


async def test_a_nonce_is_refused_until_it_expires_then_swept(db: asyncpg.Connection) -> None:
    now = datetime.now(UTC)
    assert await nonces.claim(
        db, instance_id="web-1", nonce="n" * 16, expires_at=now + timedelta(minutes=5)
    )
    assert not await nonces.claim(
        db, instance_id="web-1", nonce="n" * 16, expires_at=now + timedelta(minutes=5)
    )
    assert await nonces.claim(
        db, instance_id="web-2", nonce="n" * 16, expires_at=now + timedelta(minutes=5)
    )
    assert await nonces.claim(
        db, instance_id="web-1", nonce="o" * 16, expires_at=now - timedelta(seconds=1)
    )

    assert await nonces.delete_expired(db) == 1
    remaining = await db.fetch("SELECT instance_id, nonce FROM agent_nonces ORDER BY instance_id")
    assert [(r["instance_id"], r["nonce"]) for r in remaining] == [
        ("web-1", "n" * 16),
        ("web-2", "n" * 16),
    ]
