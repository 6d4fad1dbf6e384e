"""agent_nonces: nonces seen within the signature window, shared by every API process."""

import asyncpg


def claim_many(source: str) -> str:
    """Claims the nonce of every row of the statement's relation `source` (instance_id, nonce,
    expires_at, n), in the order of `n`: a row the first time a pair is seen, none for a replay.
    Part of the statement that does the requests' other work (store.polls, store.jobs), so a
    check costs no round trip; the callers sort their rows, so two statements in flight take
    their locks in one order. Returns the pairs claimed; a pair given twice is claimed once, so
    callers give each once."""
    return (
        "INSERT INTO agent_nonces (instance_id, nonce, expires_at)"
        f" SELECT instance_id, nonce, expires_at FROM {source} ORDER BY n"
        " ON CONFLICT DO NOTHING RETURNING instance_id, nonce"
    )


async def delete_expired(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    result = await conn.execute("DELETE FROM agent_nonces WHERE expires_at < now()")
    return int(result.split()[-1])
