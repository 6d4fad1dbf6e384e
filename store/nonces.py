"""agent_nonces: nonces seen within the signature window, shared by every API process."""

import asyncpg

# Claims a nonce for ($1 instance_id, $2 nonce, $3 expires_at): a row the first time the pair
# is seen, none for a replay. Part of the statement that does the request's other work
# (store.jobs.get_claiming_nonce, and in bulk store.polls), so a check costs no round trip.
CLAIM = (
    "INSERT INTO agent_nonces (instance_id, nonce, expires_at) VALUES ($1, $2, $3)"
    " ON CONFLICT DO NOTHING RETURNING 1"
)


async def delete_expired(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    result = await conn.execute("DELETE FROM agent_nonces WHERE expires_at < now()")
    return int(result.split()[-1])
