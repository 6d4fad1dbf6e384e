"""Canonical JSON and manifest signatures agree with independent implementations."""

import hashlib
import hmac
import json
import shutil
import subprocess
import sys

import pytest

from contract.manifest import ReleaseManifest, UnsignedManifest
from contract.signing import canonical, verify
from tests.manifests import hand_signed

SECRET = "test-release-secret-0123456789"


def test_canonical_bytes_sort_keys_without_whitespace_and_keep_non_ascii() -> None:
    assert canonical({"b": 1, "a": "é", "c": None, "d": True}) == (
        '{"a":"é","b":1,"c":null,"d":true}'.encode()
    )


def test_fixed_vector() -> None:
    """Computed once with `openssl dgst -sha256 -hmac vector-secret` over the canonical text."""
    manifest = UnsignedManifest(
        version="1.0.0",
        sha="abcdef1",
        channel="stable",
        migrations_required=False,
        breaking_changes=None,
        released_at="2026-01-01T00:00:00Z",
    )
    assert manifest.signing_bytes() == (
        b'{"breaking_changes":null,"channel":"stable","migrations_required":false,'
        b'"released_at":"2026-01-01T00:00:00Z","sha":"abcdef1","version":"1.0.0"}'
    )
    expected = "248e82f980a90b8f1b84569acd7d95cd0897ceee466e771e8de3cfd06e4112b8"
    assert manifest.signed("vector-secret").signature == expected
    assert verify("vector-secret", manifest.signing_bytes(), expected)
    assert not verify("vector-secret", manifest.signing_bytes(), expected[:-1] + "0")


def test_manifest_signature_is_hmac_of_canonical_fields_without_signature() -> None:
    unsigned = UnsignedManifest(
        version="2.0.0-rc.1",
        sha="abcdef1",
        channel="beta",
        migrations_required=False,
        breaking_changes="drops the v1 API — über",
        released_at="2026-11-01T12:00:00+02:00",
    )
    signed = unsigned.signed(SECRET)
    # The contract's six fields: the extensions absent are not signed (nor sent).
    fields = unsigned.model_dump(exclude={"expires_at", "key_signatures"})
    assert signed.as_document() == {**fields, "signature": signed.signature}
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert signed.signature == hmac.new(SECRET.encode(), text.encode(), hashlib.sha256).hexdigest()
    assert signed.has_valid_signature(SECRET)
    assert not signed.has_valid_signature(SECRET + "x")


def test_hand_signed_manifest_verifies() -> None:
    assert ReleaseManifest(**hand_signed(SECRET)).has_valid_signature(SECRET)


@pytest.mark.servers  # runs openssl (tests/tiers.py)
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_manifest_signed_with_openssl_verifies() -> None:
    fields = {
        "version": "3.1.4",
        "sha": "deadbeef",
        "channel": "stable",
        "migrations_required": True,
        "breaking_changes": None,
        "released_at": "2026-11-26T10:00:00Z",
    }
    body = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    out = subprocess.run(
        ["openssl", "dgst", "-sha256", "-hmac", SECRET],
        input=body.encode(),
        capture_output=True,
        check=True,
    ).stdout.decode()
    signature = out.strip().rsplit(" ", 1)[-1]
    assert ReleaseManifest(**fields, signature=signature).has_valid_signature(SECRET)


@pytest.mark.servers  # runs the CLI as a process (tests/tiers.py)
def test_cli_output_verifies(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "m.json"
    subprocess.run(
        [sys.executable, "-m", "cli.main", "release-manifest", "--version", "1.2.3"]
        + ["--sha", "abc1234", "--channel", "stable", "--migrations-required", "false"]
        + ["--out", str(out)],
        env={"RELEASE_SIGNING_SECRET": SECRET, "PATH": "/usr/bin:/bin"},
        check=True,
    )
    document = json.loads(out.read_text())
    assert document["breaking_changes"] is None
    assert ReleaseManifest(**document).has_valid_signature(SECRET)
