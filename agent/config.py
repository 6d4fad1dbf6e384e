"""Agent configuration from the environment (PROTOCOL §6), validated all at once.

Every problem is collected so an operator fixes the env file in one pass; values of secrets are
never part of a message.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from contract.manifest import CHANNELS, parse_version
from contract.release_keys import parse_list as release_key_list
from contract.secrets import weak_secret_problem
from contract.wire import COMMAND_STEPS, INSTANCE_ID_PATTERN
from runtime.logs import LOG_FORMATS

COMMAND_VARS = {step: f"UPDATE_{step.upper()}_CMD" for step in COMMAND_STEPS}
DEFAULT_STATE_DIR = "/var/lib/rollout-agent"
FIRST_RUN_VERSION = "0.0.0"


class ConfigError(Exception):
    """All configuration problems, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class HealthCheck:
    url: str | None = None
    retries: int = 10
    interval_seconds: float = 2.0
    timeout_seconds: float = 60.0


@dataclass(frozen=True)
class AgentConfig:
    control_plane_url: str
    instance_id: str
    secret: str = field(repr=False)
    commands: Mapping[str, str]
    rollback_command: str | None = None
    # Run by a fleet revert that restores data, with the backup reference (docs/reverts.md).
    restore_command: str | None = None
    health: HealthCheck = HealthCheck()
    channel: str = "stable"
    first_run_version: str = FIRST_RUN_VERSION
    poll_interval_seconds: float = 30.0
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    step_timeout_seconds: float = 600.0
    backoff_initial_seconds: float = 1.0
    backoff_max_seconds: float = 300.0
    request_timeout_seconds: float = 30.0
    stop_report_grace_seconds: float = 10.0
    log_format: str = "text"
    # Release keys the host trusts (key id → public key) and how many of them must have signed a
    # release (docs/security.md); none: releases are trusted as the control plane hands them.
    release_keys: Mapping[str, str] = field(default_factory=dict)
    release_keys_threshold: int = 1


class _Reader:
    """Reads env vars, remembering a problem instead of raising at the first one."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def text(self, name: str, *, required: bool = False) -> str | None:
        value = self.env.get(name, "").strip()
        if not value:
            if required:
                self.problems.append(f"{name} is not set")
            return None
        return value

    def url(self, name: str, *, required: bool = False) -> str | None:
        value = self.text(name, required=required)
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                self.problems.append(f"{name} must be an http:// or https:// URL, got {value!r}")
                return None
        return value

    def number(self, name: str, default: float, *, integer: bool = False) -> float:
        value = self.text(name)
        if value is None:
            return default
        try:
            number = int(value) if integer else float(value)
        except ValueError:
            kind = "a whole number" if integer else "a number of seconds"
            self.problems.append(f"{name} must be {kind} greater than 0, got {value!r}")
            return default
        if not number > 0:
            self.problems.append(f"{name} must be greater than 0, got {value!r}")
            return default
        return number


def load_config(env: Mapping[str, str]) -> AgentConfig:
    """Raises ConfigError listing every problem."""
    read = _Reader(env)
    url = read.url("CONTROL_PLANE_URL", required=True)
    instance_id = read.text("AGENT_INSTANCE_ID", required=True)
    if instance_id is not None and not re.fullmatch(INSTANCE_ID_PATTERN, instance_id):
        read.problems.append(
            f"AGENT_INSTANCE_ID must be 1 to 128 of A-Z a-z 0-9 . _ -, got {instance_id!r}"
        )
    secret = read.text("AGENT_SECRET", required=True)
    if secret is not None and (problem := weak_secret_problem("AGENT_SECRET", secret)):
        read.problems.append(problem)
    commands = {step: read.text(var, required=True) for step, var in COMMAND_VARS.items()}
    channel = read.text("AGENT_CHANNEL") or "stable"
    if channel not in CHANNELS:
        read.problems.append(f"AGENT_CHANNEL must be one of {', '.join(CHANNELS)}, got {channel!r}")
    first_version = read.text("AGENT_CURRENT_VERSION") or FIRST_RUN_VERSION
    try:
        parse_version(first_version)
    except ValueError as exc:
        read.problems.append(f"AGENT_CURRENT_VERSION: {exc}")
    health = HealthCheck(
        url=read.url("UPDATE_HEALTHCHECK_URL"),
        retries=int(read.number("UPDATE_HEALTHCHECK_RETRIES", HealthCheck.retries, integer=True)),
        interval_seconds=read.number("UPDATE_HEALTHCHECK_INTERVAL", HealthCheck.interval_seconds),
        timeout_seconds=read.number("UPDATE_HEALTHCHECK_TIMEOUT", HealthCheck.timeout_seconds),
    )
    config_kwargs = {
        "poll_interval_seconds": read.number("AGENT_POLL_INTERVAL", 30.0),
        "step_timeout_seconds": read.number("UPDATE_STEP_TIMEOUT", 600.0),
        "backoff_initial_seconds": read.number("AGENT_BACKOFF_INITIAL", 1.0),
        "backoff_max_seconds": read.number("AGENT_BACKOFF_MAX", 300.0),
        "request_timeout_seconds": read.number("AGENT_REQUEST_TIMEOUT", 30.0),
    }
    release_keys: dict[str, str] = {}
    try:
        release_keys = release_key_list(read.text("AGENT_RELEASE_KEYS") or "")
    except ValueError as exc:
        read.problems.append(f"AGENT_RELEASE_KEYS: {exc}")
    threshold = int(read.number("AGENT_RELEASE_KEYS_THRESHOLD", 1, integer=True))
    if release_keys and not 1 <= threshold <= len(release_keys):
        read.problems.append(
            f"AGENT_RELEASE_KEYS_THRESHOLD must be 1 to {len(release_keys)} (the keys given)"
        )
    log_format = read.text("LOG_FORMAT") or "text"
    if log_format not in LOG_FORMATS:
        read.problems.append(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}")
    if read.problems:
        raise ConfigError(read.problems)
    assert url is not None and instance_id is not None and secret is not None
    return AgentConfig(
        control_plane_url=url.rstrip("/"),
        instance_id=instance_id,
        secret=secret,
        commands={step: command for step, command in commands.items() if command is not None},
        rollback_command=read.text("UPDATE_ROLLBACK_CMD"),
        restore_command=read.text("UPDATE_RESTORE_CMD"),
        health=health,
        channel=channel,
        first_run_version=first_version,
        state_dir=Path(read.text("AGENT_STATE_DIR") or DEFAULT_STATE_DIR),
        log_format=log_format,
        release_keys=release_keys,
        release_keys_threshold=threshold,
        **config_kwargs,
    )
