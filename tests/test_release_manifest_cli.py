"""`rollout release-manifest`: bad flags print one line, exit 2 and write nothing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from contract.manifest import ReleaseManifest

# Runs the CLI as a process (tests/tiers.py).
pytestmark = pytest.mark.servers

SECRET = "cli-release-secret-0123456789"
GOOD = ["--version", "1.2.3", "--sha", "abc1234", "--channel", "beta"]
GOOD += ["--migrations-required", "true"]


def run_cli(args: list[str], secret: str | None = SECRET) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RELEASE_SIGNING_SECRET"}
    if secret is not None:
        env["RELEASE_SIGNING_SECRET"] = secret
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "release-manifest", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_writes_a_signed_manifest_with_given_fields(tmp_path: Path) -> None:
    out = tmp_path / "manifest.json"
    result = run_cli(
        [*GOOD, "--breaking-changes", "drops /v1", "--released-at", "2026-11-26T10:00:00+01:00"]
        + ["--out", str(out)]
    )
    assert result.returncode == 0, result.stderr
    manifest = ReleaseManifest(**json.loads(out.read_text()))
    assert manifest.has_valid_signature(SECRET)
    assert (manifest.version, manifest.channel, manifest.breaking_changes) == (
        "1.2.3",
        "beta",
        "drops /v1",
    )
    assert manifest.migrations_required is True
    assert manifest.released_at == "2026-11-26T10:00:00+01:00"


def test_released_at_defaults_to_now_in_utc(tmp_path: Path) -> None:
    result = run_cli(GOOD)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["released_at"].endswith("Z")


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--version", "1.2"], "--version"),
        (["--sha", "ABC1234"], "--sha"),
        (["--sha", "xyz1234"], "--sha"),
        (["--channel", "nightly"], "--channel"),
        (["--migrations-required", "yes"], "--migrations-required"),
        (["--released-at", "2026-11-26T10:00:00"], "--released-at"),
    ],
)
def test_bad_flag_prints_one_line_and_exits_2(tmp_path: Path, args: list[str], names: str) -> None:
    out = tmp_path / "m.json"
    flags = dict(zip(GOOD[::2], GOOD[1::2], strict=True))
    flags.update(dict(zip(args[::2], args[1::2], strict=True)))
    argv = [x for kv in flags.items() for x in kv]
    result = run_cli([*argv, "--out", str(out)])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and names in lines[0], result.stderr
    assert not out.exists()


def test_missing_secret_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    result = run_cli([*GOOD, "--out", str(out)], secret=None)
    assert result.returncode == 2
    assert "RELEASE_SIGNING_SECRET" in result.stderr
    assert not out.exists()


def test_unwritable_out_exits_2(tmp_path: Path) -> None:
    result = run_cli([*GOOD, "--out", str(tmp_path / "missing-dir" / "m.json")])
    assert result.returncode == 2
    assert "--out" in result.stderr and len(result.stderr.strip().splitlines()) == 1
