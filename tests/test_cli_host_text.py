"""A host's output and an operator's free text, as stored, through the real API and the `rollout`
CLI: nothing a terminal would act on reaches the operator's terminal (cli.terminal)."""

import asyncpg

from server.settings import ApiSettings
from tests.conftest import LiveServer
from tests.fixtures_fleet import seed_pending_jobs
from tests.test_admin_cli import rollout_cli
from tests.test_terminal_safe import EVIL, inert


async def test_every_listing_and_view_prints_stored_host_text_inert(
    api: LiveServer, settings: ApiSettings, db: asyncpg.Connection
) -> None:
    rollout_id = await seed_pending_jobs(db, settings, ["web-1", "web-2"])
    # As a report and a pause would leave them (NUL aside, which PostgreSQL cannot store).
    evil = EVIL.replace("\x00", "")
    await db.execute(
        "UPDATE rollouts SET status = 'aborted', paused_reason = $2, details = $2,"
        " workflow_closed = true WHERE id = $1",
        rollout_id,
        "disk full\n" + evil,
    )
    await db.execute("UPDATE update_jobs SET status = 'failed', step = 'smoke', message = $1", evil)
    await db.execute(
        "INSERT INTO job_reports (job_id, instance_id, status, step, message, nonce)"
        " VALUES ('j-web-1', 'web-1', 'in_progress', 'smoke', $1, 'n1'),"
        " ('j-web-1', 'web-1', 'failed', 'smoke', $1, 'n2')",
        "smoke output\n" + evil,
    )
    commands = [
        ("jobs", "list"),
        ("jobs", "show", "j-web-1"),
        ("rollouts", "list"),
        ("rollouts", "get", rollout_id),
        ("rollouts", "watch", rollout_id),  # not a terminal: prints the view once, exits 1
    ]
    for command in commands:
        code, out, err = await rollout_cli(api, settings, *command)
        assert code == (1 if command[1] == "watch" else 0), (command, err)
        assert inert(out, allowed="\n"), (command, out)
        assert inert(err, allowed="\n"), (command, err)
        assert "\\x1b" in out, (command, out)  # shown, escaped
