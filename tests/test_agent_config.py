"""Agent start-up: configuration errors are all named at once, secrets never printed, and the
agent package stays free of the server's dependencies."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROLLOUT = str(Path(sys.executable).parent / "rollout")
SECRET = "s3cret-value-that-must-not-leak"


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
    env = {
        "CONTROL_PLANE_URL": "https://cp.example",
        "AGENT_INSTANCE_ID": "web-1",
        "AGENT_SECRET": SECRET,
        **{f"UPDATE_{s}_CMD": "true" for s in ("BACKUP", "PULL", "MIGRATE", "SMOKE", "SWITCH")},
    }
    result = _run_agent(env, "--check")

    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stderr + result.stdout


def test_agent_imports_nothing_of_the_server() -> None:
    code = (
        "import sys, json, agent.main, agent.daemon;"
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


def test_the_example_env_file_is_a_valid_configuration(repo_root: Path) -> None:
    example = repo_root / "agent" / "examples" / "agent.env.example"
    env = dict(
        line.split("=", 1)
        for line in example.read_text().splitlines()
        if line and not line.startswith("#")
    )
    result = _run_agent(env, "--check")

    assert result.returncode == 0, result.stderr
