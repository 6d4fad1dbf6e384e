"""Control-plane settings (API and worker), read from the environment in one typed object.

The agent has its own configuration (agent/config.py): it runs on hosts with other env.
"""

import json
from functools import cached_property
from typing import Annotated, TypeVar

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from contract.release_keys import parse_list as release_key_list
from contract.secrets import weak_secret_problem


def _check_secret(name: str, value: SecretStr | None) -> SecretStr | None:
    if value is None:
        return None
    problem = weak_secret_problem(name, value.get_secret_value())
    if problem is not None:
        raise ValueError(problem)
    return value


class Settings(BaseSettings):
    """What every control-plane process (API, worker, CLI tools) needs."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore")

    database_url: str = Field(description="PostgreSQL DSN (postgresql://user:pass@host:port/db)")
    # Temporal connection (temporal_client/connect.py): unset values come from the envconfig
    # profile (TEMPORAL_CONFIG_FILE, TEMPORAL_PROFILE), else 127.0.0.1:7233 and namespace
    # "default".
    # TLS (TEMPORAL_TLS*) and gRPC metadata are read by the SDK's envconfig itself.
    temporal_address: str | None = None
    temporal_namespace: str | None = None
    temporal_api_key: SecretStr | None = None
    temporal_profile: str | None = None
    temporal_config_file: str | None = None
    temporal_task_queue: str = "rollouts"
    # The worker's Prometheus endpoint (IP:port); unset: no endpoint (worker/metrics.py).
    worker_metrics_address: str | None = Field(default=None, pattern=r"^\S+:\d{1,5}$")
    db_pool_min_size: int = 1
    db_pool_max_size: int = 10
    log_format: str = Field(default="text", pattern="^(text|json)$")
    # Worker only: how often it looks for rollouts whose workflow was closed from outside.
    reconcile_interval_seconds: float = Field(default=15.0, gt=0)
    # Hosts whose last poll is older than this are left out of new rollouts' targets, with the
    # reason in the rollout (store.rollout_targets); 0: never. Read by the worker, which takes
    # the targets, and the API, which shows it.
    instance_stale_after_seconds: int = Field(default=7 * 86_400, ge=0, le=365 * 86_400)
    # Health gates (activities/gates.py): the Prometheus server prometheus gates query, and its
    # bearer token; how long a probe may take.
    prometheus_url: str | None = Field(default=None, pattern=r"^https?://\S+$")
    prometheus_token: SecretStr | None = None
    gate_timeout_seconds: float = Field(default=5.0, gt=0, le=60)

    @field_validator("worker_metrics_address", mode="before")
    @classmethod
    def _empty_is_off(cls, value: object) -> object:
        return None if value == "" else value


class ApiSettings(Settings):
    """The API also holds the secrets that authenticate admins, releases and agents."""

    control_plane_admin_token: SecretStr
    control_plane_release_signing_secret: SecretStr
    control_plane_agent_secrets: Annotated[dict[str, SecretStr], NoDecode] = Field(
        default_factory=dict
    )
    control_plane_agent_token: SecretStr | None = None
    # Release keys (contract/release_keys.py) whose signatures an upload must carry valid when it
    # carries them: base64 public keys, comma-separated. Hosts verify them in any case.
    control_plane_release_keys: str | None = None
    # Held polls (api/agents/held_polls.py): the longest hold granted (0: none, and none
    # advertised), and how many one API process holds at once (each keeps a socket open; past
    # it, plain).
    long_poll_max_seconds: int = Field(default=25, ge=0, le=300)
    long_poll_max_held: int = Field(default=500, ge=0)
    # Webhooks (services/webhook_dispatcher.py): an attempt's timeout, the delay before the
    # first retry (doubled each time), and the attempts before a delivery is `failed`.
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    webhook_retry_base_seconds: float = Field(default=5.0, gt=0, le=3600)
    webhook_max_attempts: int = Field(default=8, ge=1, le=50)
    # Connections (api/connections.py): how long a request may take to arrive whole, how large
    # its head may be, and how many connections one API process serves (None: what its
    # open-files limit leaves room for).
    api_request_timeout_seconds: float = Field(default=10.0, gt=0, le=3600)
    api_max_header_bytes: int = Field(default=16 * 1024, ge=1024, le=1024 * 1024)
    api_max_connections: int | None = Field(default=None, ge=16)
    # /metrics (api/metrics.py): a bearer token it requires, and an `IP:port` where it is served
    # instead of on the API's port (api/metrics_listener.py). Unset: public, on the API's port.
    api_metrics_token: SecretStr | None = None
    api_metrics_address: str | None = Field(default=None, pattern=r"^\S+:\d{1,5}$")
    # New instance ids seen with CONTROL_PLANE_AGENT_TOKEN wait for an admin (services/instances).
    new_instances_need_approval: bool = False

    @field_validator("control_plane_admin_token", "control_plane_release_signing_secret")
    @classmethod
    def _refuse_weak(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        checked = _check_secret(str(info.field_name).upper(), value)
        assert checked is not None
        return checked

    @field_validator("control_plane_agent_token", "api_metrics_token")
    @classmethod
    def _refuse_weak_token(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        return _check_secret(str(info.field_name).upper(), value)

    @field_validator("api_metrics_address", "api_metrics_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("control_plane_agent_secrets", mode="before")
    @classmethod
    def _parse_agent_secrets(cls, value: object) -> object:
        problem = 'CONTROL_PLANE_AGENT_SECRETS must be a JSON object {"<instanceId>": "<secret>"}'
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(problem) from exc
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str | SecretStr) for k, v in value.items()
        ):
            raise ValueError(problem)
        return value

    @field_validator("control_plane_release_keys")
    @classmethod
    def _release_keys(cls, value: str | None) -> str | None:
        if value:
            release_key_list(value)  # raises naming the key that is not one
        return value

    @cached_property
    def release_key_values(self) -> dict[str, str]:
        """Key id → public key of CONTROL_PLANE_RELEASE_KEYS."""
        return release_key_list(self.control_plane_release_keys or "")

    @cached_property
    def agent_secret_values(self) -> dict[str, str]:
        return {k: v.get_secret_value() for k, v in self.control_plane_agent_secrets.items()}


S = TypeVar("S", bound=BaseSettings)


class SettingsError(Exception):
    """Settings that cannot start a process; the message names each problem and no secret."""


def load_settings(cls: type[S]) -> S:
    try:
        return cls()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0]).upper() if error["loc"] else "settings"
            if error["type"] == "missing":
                problems.append(f"{name} is not set")
            else:
                problems.append(f"{name}: {error['msg'].removeprefix('Value error, ')}")
        raise SettingsError("; ".join(problems)) from None
