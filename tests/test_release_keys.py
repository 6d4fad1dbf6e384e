"""Releases a stolen server secret cannot forge: Ed25519 release keys made and used by the CLI,
checked at upload, and verified on the host by real agent processes, which refuse, before any
step, a release changed after signing, signed by an unknown key, by too few keys, or expired."""

import json
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest

from api.app import create_app
from contract import release_keys
from contract.manifest import ReleaseManifest, UnsignedManifest
from devstack.ports import free_port
from server.settings import ApiSettings
from tests.conftest import LiveServer
from tests.fake_control_plane import RELEASE_SECRET
from tests.fixtures_agents import AgentFactory
from tests.fixtures_fleet import FLEET_TOKEN, registered, rollout_where
from tests.test_fleet_end_to_end import job_of, start_rollout

Plane = tuple  # (FakeControlPlane, url)


def _key() -> tuple[bytes, str]:
    return release_keys.generate()


def _manifest(version: str, *keys: bytes, expires_at: str | None = None) -> dict:
    unsigned = UnsignedManifest(
        version=version,
        sha="0123abcd",
        channel="stable",
        migrations_required=False,
        breaking_changes=None,
        released_at="2026-12-01T00:00:00Z",
        expires_at=expires_at,
    )
    if keys:
        unsigned = unsigned.key_signed(list(keys))
    return unsigned.signed(RELEASE_SECRET).as_document()


def _trusting(*public: str, threshold: int = 1) -> dict[str, str]:
    return {"AGENT_RELEASE_KEYS": ",".join(public), "AGENT_RELEASE_KEYS_THRESHOLD": str(threshold)}


async def test_hosts_install_only_releases_their_keys_vouch_for(
    fake_control_plane: Plane, agent_host: AgentFactory
) -> None:
    plane, url = fake_control_plane
    (old, old_public), (new, new_public), (stranger, _) = _key(), _key(), _key()
    changed = _manifest("1.1.0", old)
    changed["sha"] = "deadbeef"  # as if rewritten in the database after the upload
    expired = (datetime.now(UTC) - timedelta(hours=1)).isoformat(timespec="seconds")
    cases = {
        # host: (its trust, the release handed to it, installed?)
        "signed": (_trusting(old_public), _manifest("1.1.0", old), True),
        "rotated": (_trusting(old_public, new_public), _manifest("1.1.0", new), True),
        "changed": (_trusting(old_public), changed, False),
        "stranger": (_trusting(old_public), _manifest("1.1.0", stranger), False),
        "too-few": (_trusting(old_public, new_public, threshold=2), _manifest("1.1.0", old), False),
        "expired": ({}, _manifest("1.1.0", expires_at=expired), False),
    }
    hosts, jobs = {}, {}
    for name, (trust, document, _) in cases.items():
        jobs[name] = plane.add_job(name, "1.1.0", manifest_document=document)
        hosts[name] = await agent_host(url, plane.secret, instance_id=name, extra_env=trust)
    await plane.wait_until(lambda: all(plane.final_report(j) for j in jobs.values()))

    for name, (_, _, installed) in cases.items():
        final = plane.final_report(jobs[name])
        if installed:
            assert final["status"] == "succeeded", (name, final)
            assert hosts[name].steps()[-1] == "switch 1.1.0"
            continue
        assert (final["status"], final["step"]) == ("failed", "preflight"), (name, final)
        assert final["message"].startswith("preflight failed: untrusted release: "), final
        assert hosts[name].steps() == [], name  # nothing ran on the host
    assert (
        "signed by 0 of the release keys this host trusts, 1 needed"
        in (plane.final_report(jobs["changed"])["message"])
    )
    assert (
        "signed by 1 of the release keys this host trusts, 2 needed"
        in (plane.final_report(jobs["too-few"])["message"])
    )
    assert f"expired at {expired}" in plane.final_report(jobs["expired"])["message"]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.servers  # runs the CLI as a process
def test_keys_are_generated_private_and_sign_manifests(tmp_path: Path) -> None:
    made = _cli("keys", "generate", "--out", str(tmp_path / "release-key"))
    assert made.returncode == 0, made.stderr
    private = tmp_path / "release-key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    public = (tmp_path / "release-key.pub").read_text().strip()
    assert f"key id {release_keys.key_id(public)}" in made.stdout
    assert private.read_text() not in made.stdout  # never printed
    again = _cli("keys", "generate", "--out", str(private))
    assert again.returncode == 2 and "exists; a key is never overwritten" in again.stderr

    signed = _cli(
        "release-manifest", "--version", "1.2.0", "--sha", "abcdef1", "--channel", "stable",
        "--migrations-required", "false", "--sign-key", str(private),
        "--expires-at", "2030-01-01T00:00:00Z",
        env={"RELEASE_SIGNING_SECRET": RELEASE_SECRET},
    )  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    manifest = ReleaseManifest.model_validate(json.loads(signed.stdout))
    assert manifest.has_valid_signature(RELEASE_SECRET)
    assert manifest.trusted_signatures(release_keys.trusted([public])) == 1
    assert manifest.expires_at == "2030-01-01T00:00:00Z"

    bad = _cli(
        "release-manifest", "--version", "1.2.0", "--sha", "abcdef1", "--channel", "stable",
        "--migrations-required", "false", "--sign-key", str(tmp_path / "release-key.pub"),
        env={"RELEASE_SIGNING_SECRET": RELEASE_SECRET},
    )  # fmt: skip
    assert bad.returncode == 2 and "not an unencrypted PEM private key" in bad.stderr


def test_a_manifest_without_the_extensions_is_signed_and_sent_as_the_contract_says() -> None:
    document = _manifest("1.1.0")
    assert set(document) == {
        "version", "sha", "channel", "migrations_required", "breaking_changes", "released_at",
        "signature",
    }  # fmt: skip


@pytest.mark.parametrize("text", ["not base64!", "AAAA"])
def test_a_key_that_is_not_one_is_refused_naming_it(text: str) -> None:
    with pytest.raises(release_keys.ReleaseKeyError, match="not"):
        release_keys.parse_list(text)


async def test_an_upload_with_a_known_keys_signature_must_verify(
    settings: ApiSettings, db: asyncpg.Connection
) -> None:
    private, public = _key()
    secret = settings.control_plane_release_signing_secret.get_secret_value()
    configured = settings.model_copy(update={"control_plane_release_keys": public})
    unsigned = UnsignedManifest(
        version="1.5.0",
        sha="0123abcd",
        channel="stable",
        migrations_required=False,
        breaking_changes=None,
        released_at="2026-12-01T00:00:00Z",
    ).key_signed([private])
    # Whoever holds the HMAC secret (not the release key) changes what is released and signs
    # again: the HMAC checks, the release key's signature does not.
    forged = unsigned.model_copy(update={"sha": "badc0de"}).signed(secret).as_document()
    genuine = unsigned.signed(secret).as_document()
    token = settings.control_plane_admin_token.get_secret_value()
    async with (
        LiveServer(create_app(configured), free_port()) as server,
        httpx.AsyncClient(base_url=server.url, headers={"x-cp-admin-token": token}) as admin,
    ):
        refused = await admin.post("/api/releases", json=forged)
        assert refused.status_code == 422
        assert "the signature of release key" in refused.json()["detail"]
        stored = await admin.post("/api/releases", json=genuine)
        assert stored.status_code == 201, stored.text
        assert stored.json()["key_signatures"] == genuine["key_signatures"]
    row = await db.fetchval("SELECT key_signatures FROM releases WHERE version = '1.5.0'")
    assert row == genuine["key_signatures"]  # stored, to travel with every job of the release


async def test_a_release_rewritten_in_the_database_is_refused_by_the_hosts_of_a_rollout(
    plane: LiveServer,
    admin: httpx.AsyncClient,
    agent_host: AgentFactory,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    """The attacker holds the database: the rollout runs, the hosts refuse what it hands out."""
    private, public = _key()
    secret = dev_settings.control_plane_release_signing_secret.get_secret_value()
    document = (
        UnsignedManifest(
            version="1.4.0",
            sha="0123abcd",
            channel="stable",
            migrations_required=False,
            breaking_changes=None,
            released_at="2026-12-01T00:00:00Z",
        )
        .key_signed([private])
        .signed(secret)
        .as_document()
    )
    uploaded = await admin.post("/api/releases", json=document)
    assert uploaded.status_code == 201, uploaded.text
    trust = _trusting(public)
    hosts = {
        name: await agent_host(plane.url, FLEET_TOKEN, instance_id=name, extra_env=trust)
        for name in ("web-1", "web-2")
    }
    await registered(admin, 2)
    await db.execute("UPDATE releases SET sha = 'deadbeef' WHERE id = $1", uploaded.json()["id"])
    rollout = await start_rollout(admin, uploaded.json()["id"], maxFailures=5)

    settled = await rollout_where(admin, rollout["id"], lambda r: r["counts"].get("failed") == 2)
    for name, host in hosts.items():
        job = job_of(settled, name)
        assert (job["status"], job["step"]) == ("failed", "preflight")
        assert host.steps() == []  # nothing ran
    reports = await db.fetch("SELECT message FROM job_reports WHERE status = 'failed' ORDER BY id")
    assert all("untrusted release: release 1.4.0 is signed by 0" in r["message"] for r in reports)
