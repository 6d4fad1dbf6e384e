"""The API as a real process: refuses to start without secrets, reports a stopped database."""

import os
import secrets
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from devstack.ports import free_port
from devstack.postgres import EmbeddedPostgres
from server.settings import ApiSettings
from tests.conftest import LiveServer
from tests.fixtures_temporal import server_address

REQUIRED = ["CONTROL_PLANE_ADMIN_TOKEN", "CONTROL_PLANE_RELEASE_SIGNING_SECRET"]


def api_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROL_PLANE_")}
    env.update(values)
    return env


@pytest.mark.parametrize("missing", REQUIRED)
def test_api_refuses_to_start_without_a_secret(missing: str, database_url: str) -> None:
    values = {name: secrets.token_hex(16) for name in REQUIRED if name != missing}
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "api", "--port", str(free_port())],
        env=api_env(DATABASE_URL=database_url, **values),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert missing in result.stderr and "refusing to start" in result.stderr
    for value in values.values():
        assert value not in result.stderr


def test_api_refuses_a_placeholder_secret(database_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "api", "--port", str(free_port())],
        env=api_env(
            DATABASE_URL=database_url,
            CONTROL_PLANE_ADMIN_TOKEN="changeme",
            CONTROL_PLANE_RELEASE_SIGNING_SECRET=secrets.token_hex(16),
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "CONTROL_PLANE_ADMIN_TOKEN" in result.stderr and "placeholder" in result.stderr


async def test_health_names_each_dependency_that_is_down(
    tmp_path: Path, dev_env: WorkflowEnvironment
) -> None:
    server = EmbeddedPostgres(tmp_path / "pg", free_port(), durable=False)
    server.start()
    settings = ApiSettings(
        database_url=server.dsn,
        temporal_address=server_address(dev_env.client),
        control_plane_admin_token=secrets.token_hex(16),
        control_plane_release_signing_secret=secrets.token_hex(16),
    )
    no_temporal = settings.model_copy(update={"temporal_address": f"127.0.0.1:{free_port()}"})
    try:
        async with (
            LiveServer(create_app(settings), free_port()) as api,
            LiveServer(create_app(no_temporal), free_port()) as api_without_temporal,
            httpx.AsyncClient(timeout=30) as client,
        ):
            up = await client.get(f"{api.url}/health")
            assert up.status_code == 200
            assert up.json()["checks"] == {"database": "ok", "temporal": "ok"}
            half = await client.get(f"{api_without_temporal.url}/health")
            assert half.status_code == 503
            assert "temporal" in half.json()["detail"] and "database" not in half.json()["detail"]
            server.stop()
            down = await client.get(f"{api.url}/health")
            assert down.status_code == 503
            assert down.json()["checks"]["temporal"] == "ok"
            assert "database" in down.json()["detail"]
            version = await client.get(f"{api.url}/version")
            assert version.json()["version"] == _pyproject_version()
    finally:
        server.stop()


def _pyproject_version() -> str:
    with open(Path(__file__).resolve().parents[1] / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)["project"]["version"]
