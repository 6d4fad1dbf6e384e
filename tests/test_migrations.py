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


async def test_report_bounds_count_the_reports_jobs_already_stored(postgres_server: str) -> None:
    """0007 counts each job's stored reports, so a job that already has many takes no more
    starts, and marks the jobs whose final report is stored."""
    dsn = await _fresh_database(postgres_server, "migrate_report_bounds")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE schema_migrations (name text PRIMARY KEY)")
        for name, sql in migration_files():
            if name < "0007":
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations VALUES ($1)", name)
        await conn.execute(
            "INSERT INTO releases VALUES ('rel', '1.0.0', 'stable', 'abcdef0', false, null,"
            " '2026-01-01T00:00:00Z', 'sig');"
            "INSERT INTO rollouts (id, workflow_id, manifest_id, version, channel, batch_size,"
            " auto_advance, bake_seconds, max_failures, job_timeout_seconds, status, created_by)"
            " VALUES ('r', 'rollout-r', 'rel', '1.0.0', 'stable', 1, false, 0, 0, 60, 'running',"
            " 'admin');"
            "INSERT INTO update_jobs (id, rollout_id, instance_id, batch, attempt, status,"
            " deadline) VALUES ('open', 'r', 'a', 1, 1, 'in_progress', now()),"
            " ('done', 'r', 'b', 1, 1, 'failed', now()),"
            " ('quiet', 'r', 'c', 1, 1, 'pending', now());"
            "INSERT INTO job_reports (job_id, instance_id, status, step, nonce) VALUES"
            " ('open', 'a', 'in_progress', 'pull', 'n1'),"
            " ('open', 'a', 'in_progress', 'smoke', 'n2'),"
            " ('done', 'b', 'in_progress', 'pull', 'n3'), ('done', 'b', 'failed', 'pull', 'n4')"
        )
        assert (await apply_migrations(conn))[0] == "0007_report_bounds.sql"
        rows = await conn.fetch(
            "SELECT id, reports_stored, final_reported FROM update_jobs ORDER BY id"
        )
        assert [tuple(r) for r in rows] == [
            ("done", 2, True),
            ("open", 2, False),
            ("quiet", 0, False),
        ]
    finally:
        await conn.close()
