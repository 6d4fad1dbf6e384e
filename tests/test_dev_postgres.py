"""The dev stack restarts PostgreSQL in place: a dead server's lock files go, a live one's stay."""

import subprocess
from pathlib import Path

import pytest

from devstack.ports import free_port
from devstack.postgres import EmbeddedPostgres, PostgresStartError

# Starts PostgreSQL (tests/tiers.py).
pytestmark = pytest.mark.servers


def test_a_lock_naming_a_dead_server_is_cleared_and_a_live_servers_is_kept(
    tmp_path: Path,
) -> None:
    live = EmbeddedPostgres(tmp_path / "live", free_port(), durable=False)
    restarted = EmbeddedPostgres(tmp_path / "restarted", free_port(), durable=False)
    live.start()
    bystander = subprocess.Popen(["sleep", "600"])
    try:
        live_lock = (live.data_dir / "postmaster.pid").read_text().split("\n")
        assert live.process is not None and live_lock[0] == str(live.process.pid)
        lock = restarted.data_dir / "postmaster.pid"

        # The pid of a killed postmaster, now some other live process: PostgreSQL alone would
        # refuse to start ("lock file already exists"); the stale lock is cleared instead.
        restarted.prepare()
        lock.write_text("\n".join([str(bystander.pid), *live_lock[1:]]))
        restarted.start()
        assert (restarted.data_dir / "postmaster.pid").read_text().split("\n")[0] == str(
            restarted.process.pid if restarted.process else None
        )
        restarted.stop()
        assert not lock.exists()

        # A lock naming a running postgres process is left alone, with a clear refusal.
        lock.write_text("\n".join(live_lock))
        with pytest.raises(PostgresStartError, match=f"pid {live_lock[0]}"):
            restarted.start()
        assert lock.read_text() == "\n".join(live_lock)
    finally:
        bystander.kill()
        bystander.wait()
        restarted.stop()
        live.stop()
