"""The asyncpg pool every server process opens once, migrated before first use."""

import json

import asyncpg

from store.migrate import apply_migrations

# The longest an agent's request waits on one statement (its pool connection included) before it
# is answered 503: a stalled PostgreSQL (stopped, swapping, locked) must not hold a fleet's
# requests for the pool's 30 s command timeout. What the statement did, if it finishes later,
# the agent's retry finds (reports are idempotent, a nonce refused is a new one).
AGENT_STATEMENT_SECONDS = 5.0


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Released connections skip asyncpg's default reset query (`RESET ALL`, `UNLISTEN *`, ...):
    a round trip on every release, and nothing here sets session state (settings, listeners,
    cursors, session advisory locks). asyncpg still rolls back a transaction left open."""


async def connect(dsn: str) -> asyncpg.Connection:
    """A single connection with the same codecs as the pool's, for scripts and tests."""
    conn = await asyncpg.connect(dsn)
    await _init_connection(conn)
    return conn


async def open_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        command_timeout=30,
    )
    async with pool.acquire() as conn:
        await apply_migrations(conn)
    return pool
