"""Migrations are idempotent and safe when several processes start at once."""

import asyncio
import sys

import asyncpg

from store.migrate import apply_migrations, migration_files

SCHEMA_QUERY = """
SELECT table_name, column_name, data_type FROM information_schema.columns
WHERE table_schema = 'public' ORDER BY table_name, ordinal_position
"""


async def _fresh_database(postgres_server: str, name: str) -> str:
    admin = await asyncpg.connect(postgres_server)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return postgres_server.rsplit("/", 1)[0] + f"/{name}"


async def test_applying_twice_is_a_no_op(postgres_server: str) -> None:
    dsn = await _fresh_database(postgres_server, "migrate_twice")
    conn = await asyncpg.connect(dsn)
    try:
        first = await apply_migrations(conn)
        schema = await conn.fetch(SCHEMA_QUERY)
        second = await apply_migrations(conn)
        assert first == [name for name, _ in migration_files()]
        assert second == []
        assert await conn.fetch(SCHEMA_QUERY) == schema
    finally:
        await conn.close()


async def test_two_processes_migrating_at_once_do_not_collide(postgres_server: str) -> None:
    dsn = await _fresh_database(postgres_server, "migrate_racing")
    script = (
        "import asyncio, asyncpg, sys\n"
        "from store.migrate import apply_migrations\n"
        "async def main():\n"
        "    conn = await asyncpg.connect(sys.argv[1])\n"
        "    print(len(await apply_migrations(conn)))\n"
        "asyncio.run(main())\n"
    )
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, dsn, stdout=asyncio.subprocess.PIPE
        )
        for _ in range(4)
    ]
    outputs = [await p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0]
    applied = sorted(int(out.decode()) for out, _ in outputs)
    assert applied == [0, 0, 0, len(migration_files())]
    conn = await asyncpg.connect(dsn)
    try:
        names = [r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")]
        assert sorted(names) == [name for name, _ in migration_files()]
    finally:
        await conn.close()
