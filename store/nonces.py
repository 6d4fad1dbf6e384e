"""agent_nonces: nonces seen within the signature window, shared by every API process."""

import asyncpg


def claim(instance_id: str, nonce: str, expires_at: str) -> str:
    """Claims a nonce for the statement's parameters named: a row the first time the pair is
    seen, none for a replay. Part of the statement that does the request's other work
    (store.jobs, and in bulk store.polls), so a check costs no round trip."""
    return (
        f"INSERT INTO agent_nonces (instance_id, nonce, expires_at)"
        f" VALUES ({instance_id}, {nonce}, {expires_at}) ON CONFLICT DO NOTHING RETURNING 1"
    )


async def delete_expired(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    result = await conn.execute("DELETE FROM agent_nonces WHERE expires_at < now()")
    return int(result.split()[-1])
