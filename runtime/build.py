"""What this build is: the package version, one source for every process (the API's OpenAPI
document and /version, the agent's `agentVersion`), and the git commit it runs from."""

import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path

PACKAGE = "rollout-control-plane"


@cache
def package_version() -> str | None:
    """pyproject.toml's version as installed; None when the package is not installed."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return None


@cache
def git_sha() -> str | None:
    """The commit of the checkout this code runs from; None outside a git checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=2,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
