"""Agent start-up: configuration errors are all named at once, secrets never printed, and the
agent package stays free of the server's dependencies."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from contract.secrets import weak_secret_problem

# Runs `rollout agent` and Python processes (tests/tiers.py).
pytestmark = pytest.mark.servers

ROLLOUT = str(Path(sys.executable).parent / "rollout")
SECRET = "s3cret-value-that-must-not-leak"
_COMPLETE = {
    "CONTROL_PLANE_URL": "https://cp.example",
    "AGENT_INSTANCE_ID": "web-1",
    "AGENT_SECRET": SECRET,
    **{f"UPDATE_{s}_CMD": "true" for s in ("BACKUP", "PULL", "MIGRATE", "SMOKE", "SWITCH")},
}


def _run_agent(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ROLLOUT, "agent", *args],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_every_missing_required_variable_is_named() -> None:
    result = _run_agent({"AGENT_SECRET": SECRET})

    assert result.returncode == 2
    for name in (
        "CONTROL_PLANE_URL",
        "AGENT_INSTANCE_ID",
        "UPDATE_BACKUP_CMD",
        "UPDATE_PULL_CMD",
        "UPDATE_MIGRATE_CMD",
        "UPDATE_SMOKE_CMD",
        "UPDATE_SWITCH_CMD",
    ):
        assert f"{name} is not set" in result.stderr
    assert "AGENT_SECRET is not set" not in result.stderr
    assert SECRET not in result.stderr + result.stdout


def test_malformed_values_are_named_and_nothing_is_written(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    env = {
        "CONTROL_PLANE_URL": "ftp://cp.example",
        "AGENT_INSTANCE_ID": "host 1",
        "AGENT_SECRET": SECRET,
        "AGENT_CHANNEL": "nightly",
        "AGENT_CURRENT_VERSION": "1.0",
        "AGENT_POLL_INTERVAL": "soon",
        "UPDATE_STEP_TIMEOUT": "-5",
        "AGENT_STATE_DIR": str(state_dir),
        **{f"UPDATE_{s}_CMD": "true" for s in ("BACKUP", "PULL", "MIGRATE", "SMOKE", "SWITCH")},
    }
    result = _run_agent(env)

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 6, lines
    for name in (
        "CONTROL_PLANE_URL",
        "AGENT_INSTANCE_ID",
        "AGENT_CHANNEL",
        "AGENT_CURRENT_VERSION",
        "AGENT_POLL_INTERVAL",
        "UPDATE_STEP_TIMEOUT",
    ):
        assert any(line.startswith(f"rollout agent: error: {name}") for line in lines), name
    assert SECRET not in result.stderr + result.stdout
    assert not state_dir.exists()


def test_check_accepts_a_complete_configuration() -> None:
    result = _run_agent(_COMPLETE, "--check")

    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stderr + result.stdout


def test_agent_and_contract_import_nothing_of_the_server() -> None:
    """Hosts install the base package only: the agent and every contract module must load
    without the server's dependencies."""
    code = (
        "import sys, json, importlib, pkgutil, agent.main, agent.daemon, contract;"
        "[importlib.import_module(f'contract.{m.name}') for m in pkgutil.iter_modules("
        "contract.__path__)];"
        "print(json.dumps(sorted(m for m in ('temporalio', 'fastapi', 'asyncpg',"
        " 'pydantic_settings', 'uvicorn', 'starlette') if m in sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert json.loads(result.stdout) == []


def test_an_unreadable_journal_stops_the_start(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "state.json").write_text("{not json")
    env = {
        "CONTROL_PLANE_URL": "http://127.0.0.1:9",
        "AGENT_INSTANCE_ID": "web-1",
        "AGENT_SECRET": SECRET,
        "AGENT_STATE_DIR": str(state_dir),
        **{f"UPDATE_{s}_CMD": "true" for s in ("BACKUP", "PULL", "MIGRATE", "SMOKE", "SWITCH")},
    }
    result = _run_agent(env)

    assert result.returncode == 2
    assert f"{state_dir / 'state.json'} is not a journal" in result.stderr
    assert (state_dir / "state.json").read_text() == "{not json"


def test_the_example_env_file_needs_only_a_real_secret(repo_root: Path) -> None:
    example = repo_root / "agent" / "examples" / "agent.env.example"
    env = dict(
        line.split("=", 1)
        for line in example.read_text().splitlines()
        if line and not line.startswith("#")
    )

    as_shipped = _run_agent(env, "--check")
    with_a_real_secret = _run_agent({**env, "AGENT_SECRET": SECRET}, "--check")

    assert as_shipped.returncode == 2
    assert as_shipped.stderr.splitlines() == [
        "rollout agent: error: AGENT_SECRET is a placeholder; generate one with:"
        " python3 -c 'import secrets; print(secrets.token_hex(32))'"
    ]
    assert with_a_real_secret.returncode == 0, with_a_real_secret.stderr


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("changeme", "is a placeholder"),
        ("CHANGE_ME", "is a placeholder"),
        ("change-me-to-a-long-random-secret", "is a placeholder"),
        ("password", "is a placeholder"),
        ("a" * 15, "is shorter than 16 characters"),
    ],
)
def test_check_refuses_weak_secrets_as_the_api_does(secret: str, problem: str) -> None:
    env = {**_COMPLETE, "AGENT_SECRET": secret}

    result = _run_agent(env, "--check")

    assert result.returncode == 2
    assert f"rollout agent: error: AGENT_SECRET {problem}" in result.stderr
    assert secret not in result.stderr.replace("AGENT_SECRET", "")
    assert weak_secret_problem("CONTROL_PLANE_ADMIN_TOKEN", secret) is not None


def test_check_reports_every_problem_at_once() -> None:
    env = {**_COMPLETE, "CONTROL_PLANE_URL": "", "AGENT_SECRET": "changeme", "LOG_FORMAT": "xml"}

    result = _run_agent(env, "--check")

    assert result.returncode == 2
    problems = [line.split(": ")[2].split()[0] for line in result.stderr.splitlines()]
    assert problems == ["CONTROL_PLANE_URL", "AGENT_SECRET", "LOG_FORMAT"]


def test_one_agent_per_state_directory_and_its_files_are_private(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    # Nothing answers on port 9: the agent keeps polling, which is all this test needs.
    env = {
        "PATH": os.environ["PATH"],
        **_COMPLETE,
        "CONTROL_PLANE_URL": "http://127.0.0.1:9",
        "AGENT_STATE_DIR": str(state_dir),
    }
    first = subprocess.Popen(
        [ROLLOUT, "agent"], env=env, stderr=subprocess.PIPE, text=True, umask=0o002
    )
    try:
        assert first.stderr is not None
        for line in first.stderr:  # the journal is written before the first poll
            if "polling" in line:
                break

        second = _run_agent(env)

        assert second.returncode == 3
        assert second.stderr == (
            f"rollout agent: error: another rollout agent (pid {first.pid}) is running with"
            f" AGENT_STATE_DIR={state_dir}; only one agent may use a state directory\n"
        )
        assert first.poll() is None
        assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
        modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in state_dir.iterdir()}
        assert modes == {"state.json": 0o600, "agent.lock": 0o600}
    finally:
        first.terminate()
        assert first.wait(timeout=10) == 0
