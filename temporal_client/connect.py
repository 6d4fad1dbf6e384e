"""The one way every process (API, worker, CLI, tests) opens a Temporal client.

Where to connect and how to authenticate come from the SDK's environment configuration
(`temporalio.envconfig`), the same as the `temporal` CLI reads: a TOML profile
(`TEMPORAL_CONFIG_FILE`, `TEMPORAL_PROFILE`), overridden by `TEMPORAL_ADDRESS`,
`TEMPORAL_NAMESPACE`, `TEMPORAL_API_KEY`, `TEMPORAL_TLS*` and `TEMPORAL_GRPC_META_*`. So a
self-hosted cluster with mTLS or Temporal Cloud with an API key needs no code, only env.
"""

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfigProfile, ClientConnectConfig
from temporalio.runtime import Runtime

from server.settings import Settings
from temporal_client.core_logs import forwarding_runtime

log = logging.getLogger("rollout.temporal")
DEFAULT_ADDRESS = "127.0.0.1:7233"
DEFAULT_NAMESPACE = "default"


class TemporalConfigError(RuntimeError):
    """The profile or TLS files cannot be read; the message names the setting, never a secret."""


def connect_config(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> ClientConnectConfig:
    """Profile file, then the `TEMPORAL_*` environment (`environ`, else this process's), then
    what `settings` set explicitly (tests and the dev stack point processes at a server).

    A profile file is read only when named (TEMPORAL_CONFIG_FILE or TEMPORAL_PROFILE): a server
    must not pick up whatever ~/.config/temporalio/temporal.toml its user keeps for the CLI.
    """
    config_file = settings.temporal_config_file
    if config_file and not Path(config_file).is_file():
        # envconfig would quietly fall back to no profile at all.
        raise TemporalConfigError(f"TEMPORAL_CONFIG_FILE {config_file} is not a readable file")
    try:
        profile = ClientConfigProfile.load(
            profile=settings.temporal_profile,
            config_source=Path(config_file) if config_file else None,
            disable_file=not (config_file or settings.temporal_profile),
            override_env_vars=dict(os.environ if environ is None else environ),
        )
        config = profile.to_client_connect_config()
    except (OSError, RuntimeError, ValueError) as exc:
        # Only the first line: a TOML parse error goes on to quote the offending line, which
        # may hold the API key.
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TemporalConfigError(f"Temporal client configuration: {first_line}") from None
    if settings.temporal_address:
        config["target_host"] = settings.temporal_address
    config.setdefault("target_host", DEFAULT_ADDRESS)
    if settings.temporal_namespace:
        config["namespace"] = settings.temporal_namespace
    config.setdefault("namespace", DEFAULT_NAMESPACE)
    if settings.temporal_api_key is not None:
        config["api_key"] = settings.temporal_api_key.get_secret_value()
        config.setdefault("tls", True)  # as envconfig does: an API key implies TLS
    return config


def describe(config: ClientConnectConfig) -> str:
    """For logs: where and how the client connects, without the key or certificate contents."""
    tls = config.get("tls", False)
    how = "TLS" if tls else "plaintext"
    if not isinstance(tls, bool) and tls.client_cert is not None:
        how = "mTLS"
    if "api_key" in config:
        how += " + API key"
    return f"{config['target_host']} (namespace {config['namespace']}, {how})"


async def connect_temporal(
    settings: Settings,
    *,
    lazy: bool = False,
    runtime: Runtime | None = None,
    environ: Mapping[str, str] | None = None,
) -> Client:
    """A client speaking pydantic payloads; `lazy` defers the connection to its first call, so
    the API starts (and serves its read model) while Temporal is still down. `runtime` carries
    the worker's metrics exporter; without it, the SDK core's log lines still go through Python
    logging (temporal_client/core_logs.py)."""
    config = connect_config(settings, environ)
    log.info("Temporal client for %s", describe(config))
    return await Client.connect(
        **config,
        data_converter=pydantic_data_converter,
        lazy=lazy,
        runtime=runtime or forwarding_runtime(),
    )
