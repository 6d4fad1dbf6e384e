"""Per-agent secrets as one JSON object {"<instanceId>": "<secret>"}: the same shape the API reads
from CONTROL_PLANE_AGENT_SECRETS, so one file configures both sides."""

import json
import os
import secrets
from pathlib import Path


def load(path: Path) -> dict[str, str]:
    """Raises ValueError naming what is wrong (never a secret's value)."""
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from exc
    if not isinstance(document, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in document.items()
    ):
        raise ValueError(f'{path} must hold a JSON object {{"<instanceId>": "<secret>"}}')
    return document


def emit(path: Path, instance_ids: list[str]) -> None:
    """Fresh random secrets, written readable by the owner only."""
    document = {instance_id: secrets.token_hex(32) for instance_id in instance_ids}
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(document, handle, indent=1)
        handle.write("\n")
    path.chmod(0o600)
