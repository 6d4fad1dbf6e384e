"""agent_nonces: nonces seen within the signature window, shared by every API process."""

from datetime import datetime

import asyncpg


async def claim(
    conn: asyncpg.Connection | asyncpg.Pool, *, instance_id: str, nonce: str, expires_at: datetime
) -> bool:
    """True the first time (instance, nonce) is seen; False for a replay."""
    row = await conn.fetchval(
        "INSERT INTO agent_nonces (instance_id, nonce, expires_at) VALUES ($1, $2, $3)"
        " ON CONFLICT DO NOTHING RETURNING 1",
        instance_id,
        nonce,
        expires_at,
    )
    return row is not None


async def delete_expired(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    result = await conn.execute("DELETE FROM agent_nonces WHERE expires_at < now()")
    return int(result.split()[-1])
