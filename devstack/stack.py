"""`rollout dev`: the whole control plane on embedded defaults, in one foreground process."""

import asyncio
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from devstack import secrets as dev_secrets
from devstack.ports import port_is_free
from devstack.postgres import EmbeddedPostgres, PostgresStartError
from devstack.processes import Child, say
from devstack.temporal import TemporalDevServer, TemporalStartError

DEV_DATABASE = "rollout"


@dataclass(frozen=True)
class DevConfig:
    """Every knob comes from env, so two stacks can run side by side."""

    data_dir: Path
    api_port: int
    postgres_port: int
    temporal_port: int
    temporal_ui_port: int

    @classmethod
    def from_env(cls) -> "DevConfig":
        return cls(
            data_dir=Path(os.environ.get("ROLLOUT_DATA_DIR", ".data")).resolve(),
            api_port=int(os.environ.get("ROLLOUT_API_PORT", "8000")),
            postgres_port=int(os.environ.get("ROLLOUT_POSTGRES_PORT", "5433")),
            temporal_port=int(os.environ.get("ROLLOUT_TEMPORAL_PORT", "7233")),
            temporal_ui_port=int(os.environ.get("ROLLOUT_TEMPORAL_UI_PORT", "8233")),
        )

    def ports(self) -> dict[str, int]:
        return {
            "ROLLOUT_API_PORT": self.api_port,
            "ROLLOUT_POSTGRES_PORT": self.postgres_port,
            "ROLLOUT_TEMPORAL_PORT": self.temporal_port,
            "ROLLOUT_TEMPORAL_UI_PORT": self.temporal_ui_port,
        }


class StackError(Exception):
    pass


def check_ports(config: DevConfig) -> None:
    for env_name, port in config.ports().items():
        if not port_is_free(port):
            raise StackError(f"port {port} is already in use; set {env_name} to a free port")


async def ensure_database(server: EmbeddedPostgres) -> str:
    conn = await asyncpg.connect(server.dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DEV_DATABASE)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{DEV_DATABASE}"')
    finally:
        await conn.close()
    return server.dsn_for(DEV_DATABASE)


async def run_stack(config: DevConfig) -> int:
    check_ports(config)
    secrets_file = config.data_dir / "dev-secrets.env"
    secrets = dev_secrets.load_or_create(secrets_file)
    postgres = EmbeddedPostgres(config.data_dir / "postgres", config.postgres_port)
    say(f"starting PostgreSQL on 127.0.0.1:{config.postgres_port} (data in {postgres.data_dir})")
    await asyncio.to_thread(postgres.start)
    children: list[Child] = []
    try:
        database_url = await ensure_database(postgres)
        temporal = TemporalDevServer(config.data_dir, config.temporal_port, config.temporal_ui_port)
        temporal_process = Child("temporal", temporal.argv())
        children.append(temporal_process)
        await temporal_process.start()
        say(f"starting the Temporal dev server on {temporal.address}")
        await temporal.wait_ready()
        env = {**secrets, "DATABASE_URL": database_url, "TEMPORAL_ADDRESS": temporal.address}
        rollout = [sys.executable, "-m", "cli.main"]
        for child in (
            Child("worker", [*rollout, "worker"], env),
            Child("api", [*rollout, "api", "--port", str(config.api_port)], env),
        ):
            children.append(child)
            await child.start()
        say(f"API docs:        http://127.0.0.1:{config.api_port}/docs")
        say(f"Temporal Web UI: {temporal.ui_url}")
        say(f"dev secrets:     {secrets_file}  (source it to use the CLI and curl)")
        say("Ctrl-C stops everything")
        return await _wait_for_stop_or_crash(children)
    finally:
        for child in reversed(children):
            await child.stop()
        await asyncio.to_thread(postgres.stop)
        say("stopped")


async def _wait_for_stop_or_crash(children: list[Child]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    waits = {asyncio.create_task(c.process.wait()): c for c in children if c.process}
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopper, *waits], return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        if task in waits:
            say(f"{waits[task].name} exited with status {task.result()}; stopping the stack")
            return 1
    return 0


def main() -> int:
    try:
        return asyncio.run(run_stack(DevConfig.from_env()))
    except (StackError, PostgresStartError, TemporalStartError) as exc:
        print(f"rollout dev: {exc}", file=sys.stderr)
        return 2
