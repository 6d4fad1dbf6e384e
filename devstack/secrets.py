"""Dev secrets: generated once into a file the user can `source`, so a first run needs no setup."""

import secrets
import shlex
from pathlib import Path

DEV_SECRET_NAMES = (
    "CONTROL_PLANE_ADMIN_TOKEN",
    "CONTROL_PLANE_RELEASE_SIGNING_SECRET",
    "CONTROL_PLANE_AGENT_TOKEN",
)


def load_or_create(path: Path) -> dict[str, str]:
    values = _read(path) if path.exists() else {}
    missing = [name for name in DEV_SECRET_NAMES if not values.get(name)]
    if missing:
        values.update({name: secrets.token_hex(32) for name in missing})
        # The release tooling signs with the same secret the control plane verifies with.
        values["RELEASE_SIGNING_SECRET"] = values["CONTROL_PLANE_RELEASE_SIGNING_SECRET"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "# Dev secrets for `rollout dev`; `source` this file to use the CLI and curl.\n"
            + "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(values.items()))
        )
        path.chmod(0o600)
    return values


def _read(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip().removeprefix("export ")
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = shlex.split(value)[0] if value else ""
    return values
