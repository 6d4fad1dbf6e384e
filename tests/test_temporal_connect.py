"""Connecting to a production Temporal: the SDK's environment configuration (TOML profiles,
TEMPORAL_* variables) decides address, namespace, API key and TLS; mTLS is exercised for real
through a TLS front of the dev server, and no secret reaches a log line."""

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from temporalio.service import TLSConfig
from temporalio.testing import WorkflowEnvironment

from devstack.ports import free_port
from server.settings import ApiSettings, Settings
from temporal_client.connect import TemporalConfigError, connect_config, connect_temporal
from tests.control_plane_processes import process_env, worker_process
from tests.fixtures_temporal import seed_instances, seed_release, server_address
from tests.tls_terminator import Certificates, TlsTerminator, make_certificates

API_KEY = "tmprl-test-key-0123456789abcdef"
PROFILES = """
[profile.default]
address = "from-file:7233"
namespace = "file-namespace"

[profile.cloud]
address = "my-ns.a1b2c.tmprl.cloud:7233"
namespace = "my-ns.a1b2c"
api_key = "{key}"
"""


def bare() -> Settings:
    """Settings with nothing about Temporal set, as a process started without TEMPORAL_*."""
    return Settings(database_url="postgresql://unused")


@pytest.fixture
def profiles(tmp_path: Path) -> Path:
    path = tmp_path / "temporal.toml"
    path.write_text(PROFILES.format(key=API_KEY))
    return path


def test_nothing_set_means_the_local_dev_server() -> None:
    assert connect_config(bare(), {}) == {"target_host": "127.0.0.1:7233", "namespace": "default"}


def with_file(path: Path, profile: str | None = None) -> Settings:
    """Settings as TEMPORAL_CONFIG_FILE (and TEMPORAL_PROFILE) in the environment give them."""
    return bare().model_copy(
        update={"temporal_config_file": str(path), "temporal_profile": profile}
    )


def test_profile_then_environment_then_explicit_settings(profiles: Path) -> None:
    assert connect_config(with_file(profiles), {}) == {
        "target_host": "from-file:7233",
        "namespace": "file-namespace",
    }
    env = {"TEMPORAL_NAMESPACE": "from-env"}
    assert connect_config(with_file(profiles), env)["namespace"] == "from-env"
    pinned = with_file(profiles).model_copy(update={"temporal_address": "pinned:1"})
    assert connect_config(pinned, env)["target_host"] == "pinned:1"


def test_the_users_own_cli_profile_is_read_only_when_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = tmp_path / ".config" / "temporalio" / "temporal.toml"
    own.parent.mkdir(parents=True)
    own.write_text(PROFILES.format(key=API_KEY))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert connect_config(bare(), {})["target_host"] == "127.0.0.1:7233"
    named = bare().model_copy(update={"temporal_profile": "cloud"})
    assert connect_config(named, {})["target_host"] == "my-ns.a1b2c.tmprl.cloud:7233"


def test_a_cloud_profile_carries_its_api_key_and_turns_tls_on(profiles: Path) -> None:
    config = connect_config(with_file(profiles, "cloud"), {})
    assert config == {
        "target_host": "my-ns.a1b2c.tmprl.cloud:7233",
        "namespace": "my-ns.a1b2c",
        "api_key": API_KEY,
        "tls": True,
    }


def test_tls_variables_and_grpc_metadata_reach_the_client(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    config = connect_config(
        bare(),
        {
            "TEMPORAL_ADDRESS": "temporal.internal:7233",
            "TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(certs.ca),
            "TEMPORAL_TLS_CLIENT_CERT_PATH": str(certs.client_cert),
            "TEMPORAL_TLS_CLIENT_KEY_PATH": str(certs.client_key),
            "TEMPORAL_TLS_SERVER_NAME": "temporal.internal",
            "TEMPORAL_GRPC_META_X_TENANT": "blue",
        },
    )
    assert config["tls"] == TLSConfig(
        server_root_ca_cert=certs.ca.read_bytes(),
        domain="temporal.internal",
        client_cert=certs.client_cert.read_bytes(),
        client_private_key=certs.client_key.read_bytes(),
    )
    assert config["rpc_metadata"] == {"x-tenant": "blue"}


def test_settings_read_the_api_key_from_the_environment_and_never_show_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEMPORAL_API_KEY", API_KEY)
    settings = Settings(database_url="postgresql://unused")
    assert API_KEY not in repr(settings) and API_KEY not in str(settings.model_dump())
    assert connect_config(settings, {})["api_key"] == API_KEY


@pytest.mark.parametrize(
    ("settings_update", "environ", "named"),
    [
        ({"temporal_config_file": "/nonexistent/temporal.toml"}, {}, "TEMPORAL_CONFIG_FILE"),
        ({"temporal_profile": "staging"}, {}, "Profile 'staging' not found"),
        ({}, {"TEMPORAL_TLS_CLIENT_CERT_PATH": "/nonexistent/client.pem"}, "client.pem"),
    ],
)
def test_unreadable_configuration_is_named(
    settings_update: dict, environ: dict[str, str], named: str, profiles: Path
) -> None:
    settings = with_file(profiles).model_copy(update=settings_update)
    with pytest.raises(TemporalConfigError, match=named):
        connect_config(settings, environ)


COMMANDS = {"api": ["api", "--port", str(free_port())], "worker": ["worker"]}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_missing_profile_stops_the_process_with_one_line(
    command: str, settings: ApiSettings, profiles: Path
) -> None:
    env = process_env(settings, TEMPORAL_CONFIG_FILE=str(profiles), TEMPORAL_PROFILE="staging")
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", *COMMANDS[command]],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert f"rollout {command}: " in result.stderr
    assert "Profile 'staging' not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_broken_profile_file_is_named_without_quoting_its_key(tmp_path: Path) -> None:
    broken = tmp_path / "temporal.toml"
    broken.write_text(f'[profile.default]\napi_key = "{API_KEY}\n')  # unterminated string
    settings = bare().model_copy(update={"temporal_config_file": str(broken)})
    with pytest.raises(TemporalConfigError, match="TOML parse error at line 2") as refused:
        connect_config(settings, {})
    assert API_KEY not in str(refused.value)


# --- real TLS ------------------------------------------------------------------------------------


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path)


@pytest.fixture
async def tls_front(
    dev_env: WorkflowEnvironment, certificates: Certificates
) -> AsyncIterator[TlsTerminator]:
    async with TlsTerminator(server_address(dev_env.client), certificates) as front:
        yield front


def mtls_profile(path: Path, front: TlsTerminator, certs: Certificates, namespace: str) -> Path:
    path.write_text(
        f"""
[profile.prod]
address = "{front.address}"
namespace = "{namespace}"
[profile.prod.tls]
server_name = "localhost"
server_ca_cert_path = "{certs.ca}"
client_cert_path = "{certs.client_cert}"
client_key_path = "{certs.client_key}"
"""
    )
    return path


async def test_a_tls_profile_connects_with_the_client_certificate(
    tls_front: TlsTerminator,
    certificates: Certificates,
    dev_env: WorkflowEnvironment,
    tmp_path: Path,
) -> None:
    profile = mtls_profile(tmp_path / "t.toml", tls_front, certificates, dev_env.client.namespace)
    client = await connect_temporal(with_file(profile, "prod"), environ={})
    await client.count_workflows()  # a real round trip through the TLS front (raises if not)
    assert "rollout-worker" in tls_front.clients


async def test_without_a_client_certificate_the_server_refuses(
    tls_front: TlsTerminator, certificates: Certificates
) -> None:
    with pytest.raises(RuntimeError):
        await connect_temporal(
            bare(),
            environ={
                "TEMPORAL_ADDRESS": tls_front.address,
                "TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(certificates.ca),
                "TEMPORAL_TLS_SERVER_NAME": "localhost",
            },
        )
    assert tls_front.clients == []


async def test_the_worker_process_runs_rollouts_over_mtls_and_logs_no_secret(
    tls_front: TlsTerminator,
    certificates: Certificates,
    dev_admin: httpx.AsyncClient,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    env = process_env(
        dev_settings.model_copy(update={"temporal_address": None}),
        TEMPORAL_ADDRESS=tls_front.address,
        TEMPORAL_API_KEY=API_KEY,
        TEMPORAL_TLS_SERVER_CA_CERT_PATH=str(certificates.ca),
        TEMPORAL_TLS_CLIENT_CERT_PATH=str(certificates.client_cert),
        TEMPORAL_TLS_CLIENT_KEY_PATH=str(certificates.client_key),
        TEMPORAL_TLS_SERVER_NAME="localhost",
    )
    async with worker_process(env) as worker:
        release_id = await seed_release(db, dev_settings)
        await seed_instances(db, ["db-1"])
        created = await dev_admin.post(
            "/api/rollouts", json={"manifestId": release_id, "channel": "stable", "batchSize": 1}
        )
        assert created.status_code == 201, created.text
        # The first batch exists only once the worker (reachable over mTLS only) ran the workflow.
        assert [j["instanceId"] for j in created.json()["batches"][0]["jobs"]] == ["db-1"]
    assert f"{tls_front.address} (namespace default, mTLS + API key)" in worker.log()
    assert "rollout-worker" in tls_front.clients
    key_text = certificates.client_key.read_text().splitlines()[1]
    assert API_KEY not in worker.log() and key_text not in worker.log()
