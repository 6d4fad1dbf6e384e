"""`rollout dev`: the whole control plane on embedded defaults, in one foreground process.

PostgreSQL, the Temporal dev server, the worker and the API run as supervised children: one that
dies is restarted (see devstack/processes.py); Ctrl-C or SIGTERM stops them all, in order, and
they stop by themselves should `rollout dev` be killed. One `rollout dev` runs on a data folder
at a time; what one could not stop is stopped by the next (devstack/leftovers.py).
"""

import asyncio
import os
import shlex
import signal
import sys
import time
from pathlib import Path

import asyncpg
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from cli.errors import settings_or_exit
from cli.output import discard, write_safely
from devstack import leftovers
from devstack import secrets as dev_secrets
from devstack.ports import port_is_free, port_owner
from devstack.postgres import EmbeddedPostgres, PostgresStartError
from devstack.processes import Child, say
from devstack.temporal import TemporalDevServer, TemporalStartError

DEV_DATABASE = "rollout"
_POSTGRES_START_SECONDS = 30.0


class DevSettings(BaseSettings):
    """Every knob comes from env, so two stacks can run side by side."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    rollout_data_dir: Path = Path(".data")
    rollout_api_port: int = Field(8000, ge=1, le=65535)
    rollout_postgres_port: int = Field(5433, ge=1, le=65535)
    rollout_temporal_port: int = Field(7233, ge=1, le=65535)
    rollout_temporal_ui_port: int = Field(8233, ge=1, le=65535)

    @property
    def data_dir(self) -> Path:
        return self.rollout_data_dir.resolve()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.rollout_api_port}"

    def ports(self) -> dict[str, int]:
        return {
            "ROLLOUT_API_PORT": self.rollout_api_port,
            "ROLLOUT_POSTGRES_PORT": self.rollout_postgres_port,
            "ROLLOUT_TEMPORAL_PORT": self.rollout_temporal_port,
            "ROLLOUT_TEMPORAL_UI_PORT": self.rollout_temporal_ui_port,
        }


class StackError(Exception):
    pass


def check_ports(config: DevSettings) -> None:
    for env_name, port in config.ports().items():
        if not port_is_free(port):
            owner = port_owner(port)
            by = f" (by {leftovers.describe(owner)})" if owner is not None else ""
            raise StackError(f"port {port} is already in use{by}; set {env_name} to a free port")


def stop_leftovers(data_dir: Path) -> None:
    """Stop what a `rollout dev` on this folder that was killed left running, saying so."""
    found = leftovers.find(data_dir)
    if not found:
        return
    heads = ", ".join(f"{head.name} (pid {head.pid})" for head in leftovers.heads(found))
    say(f"{data_dir} has a stack left over from a `rollout dev` that is gone: {heads}; stopping it")
    killed = leftovers.stop(found)
    if killed:
        names = ", ".join(f"{head.name} (pid {head.pid})" for head in killed)
        say(f"killed what did not stop within {leftovers.STOP_SECONDS:.0f}s: {names}")
    else:
        say("the left-over stack stopped")


async def ensure_database(server: EmbeddedPostgres) -> str:
    conn = await asyncpg.connect(server.dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DEV_DATABASE)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{DEV_DATABASE}"')
    finally:
        await conn.close()
    return server.dsn_for(DEV_DATABASE)


async def wait_for_database(server: EmbeddedPostgres, child: Child) -> str:
    """Until PostgreSQL accepts connections; then the dev database exists. Its DSN."""
    deadline = time.monotonic() + _POSTGRES_START_SECONDS
    while True:
        if child.exits:
            raise PostgresStartError(
                f"postgres exited while starting (is port {server.port} taken? see its log)"
            )
        try:
            return await ensure_database(server)
        except (OSError, asyncpg.CannotConnectNowError) as exc:
            if time.monotonic() > deadline:
                raise PostgresStartError(
                    f"postgres did not accept connections within {_POSTGRES_START_SECONDS:.0f}s"
                    f" ({exc})"
                ) from None
        await asyncio.sleep(0.1)


def postgres_child(server: EmbeddedPostgres, env: dict[str, str]) -> Child:
    user = server.prepare()  # initdb on first use; fails early and clearly if it cannot
    # SIGINT is PostgreSQL's fast shutdown: sessions are disconnected, data is consistent.
    return Child(
        "postgres",
        server.argv(),
        env,
        user=user,
        prepare=server.clear_stale_lock,
        stop_signal=signal.SIGINT,
    )


async def run_stack(config: DevSettings, stop: asyncio.Event, serving: asyncio.Event) -> int:
    lock = leftovers.lock_data_dir(config.data_dir)  # held until this process ends
    await asyncio.to_thread(stop_leftovers, config.data_dir)
    check_ports(config)
    secrets_file = config.data_dir / "dev-secrets.env"
    secrets = dev_secrets.load_or_create(secrets_file)
    postgres = EmbeddedPostgres(config.data_dir / "postgres", config.rollout_postgres_port)
    children: list[Child] = []
    try:
        say(f"starting PostgreSQL on 127.0.0.1:{postgres.port} (data in {postgres.data_dir})")
        marks = leftovers.marks(config.data_dir, "postgres")
        database = await asyncio.to_thread(postgres_child, postgres, marks)
        children.append(database)
        await database.start()
        database_url = await wait_for_database(postgres, database)
        temporal = TemporalDevServer(
            config.data_dir, config.rollout_temporal_port, config.rollout_temporal_ui_port
        )
        temporal_child = Child(
            "temporal", temporal.argv(), leftovers.marks(config.data_dir, "temporal")
        )
        children.append(temporal_child)
        say(f"starting the Temporal dev server on {temporal.address}")
        await temporal_child.start()
        await temporal.wait_ready()
        env = {
            **{k: v for k, v in secrets.items() if k != dev_secrets.URL_NAME},
            "DATABASE_URL": database_url,
            "TEMPORAL_ADDRESS": temporal.address,
        }
        rollout = [sys.executable, "-m", "cli.main"]
        for child in (
            Child(
                "worker",
                [*rollout, "worker"],
                {**env, **leftovers.marks(config.data_dir, "worker")},
            ),
            Child(
                "api",
                [*rollout, "api", "--port", str(config.rollout_api_port)],
                {**env, **leftovers.marks(config.data_dir, "api")},
            ),
        ):
            children.append(child)
            await child.start()
        dev_secrets.publish_url(secrets_file, config.api_url)
        say(f"API docs:        {config.api_url}/docs")
        say(f"Temporal Web UI: {temporal.ui_url}")
        # The file's real place (ROLLOUT_DATA_DIR moves it), as a command to copy.
        say(f"dev secrets:     source {shlex.quote(str(secrets_file))}  (CLI, simulator, curl)")
        say("Ctrl-C stops everything")
        serving.set()
        await stop.wait()
        return 0
    finally:
        await _stop_all(children)
        os.close(lock)


async def _stop_all(children: list[Child]) -> None:
    """In reverse start order; one child failing to stop does not leave the others running."""
    for child in reversed(children):
        try:
            await child.stop()
        except Exception as exc:  # keep stopping the rest
            say(f"stopping {child.name} failed: {exc!r}")
    say("stopped")


async def _run(config: DevSettings) -> int:
    stop, serving = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    work = asyncio.create_task(run_stack(config, stop, serving))
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([work, stopper], return_when=asyncio.FIRST_COMPLETED)
    # A stop during start-up cancels the start; run_stack's `finally` still stops what started.
    # Once serving, run_stack stops everything itself and must not be interrupted.
    if not serving.is_set():
        work.cancel()
    try:
        return await work
    except asyncio.CancelledError:
        return 0
    finally:
        stopper.cancel()


def main() -> int:
    config = settings_or_exit(DevSettings, "rollout dev")
    try:
        return asyncio.run(_run(config))
    except (StackError, leftovers.FolderInUse, PostgresStartError, TemporalStartError) as exc:
        write_safely(sys.stderr, f"rollout dev: {exc}\n")
        return 2
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                discard(stream)
