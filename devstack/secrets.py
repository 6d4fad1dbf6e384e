"""Dev secrets: generated once into a file the user can `source`, so a first run needs no setup.

The file also carries `CONTROL_PLANE_URL`, rewritten at every start, so the CLI and the simulator
call this stack's API even when its port moved.
"""

import secrets
import shlex
from pathlib import Path

DEV_SECRET_NAMES = (
    "CONTROL_PLANE_ADMIN_TOKEN",
    "CONTROL_PLANE_RELEASE_SIGNING_SECRET",
    "CONTROL_PLANE_AGENT_TOKEN",
)
URL_NAME = "CONTROL_PLANE_URL"


def load_or_create(path: Path) -> dict[str, str]:
    """The secrets (and the URL last published), creating missing secrets."""
    values = _read(path) if path.exists() else {}
    missing = [name for name in DEV_SECRET_NAMES if not values.get(name)]
    if missing:
        values.update({name: secrets.token_hex(32) for name in missing})
        # The release tooling signs with the same secret the control plane verifies with.
        values["RELEASE_SIGNING_SECRET"] = values["CONTROL_PLANE_RELEASE_SIGNING_SECRET"]
        _write(path, values)
    return values


def publish_url(path: Path, url: str) -> None:
    """Record where this stack's API listens, next to the secrets the CLI reads with it."""
    values = load_or_create(path)
    if values.get(URL_NAME) != url:
        _write(path, {**values, URL_NAME: url})


def _write(path: Path, values: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(
        "# Dev secrets and API address for `rollout dev`; `source` this file to use the CLI,\n"
        "# the simulator and curl (the stack rewrites CONTROL_PLANE_URL at every start).\n"
        + "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(values.items()))
    )


def _read(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip().removeprefix("export ")
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = shlex.split(value)[0] if value else ""
    return values
