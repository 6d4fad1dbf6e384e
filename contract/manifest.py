"""The signed release manifest (PROTOCOL §2)."""

import functools
from datetime import datetime
from typing import Any, Literal

import semver
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from contract import release_keys
from contract.signing import canonical, sign, verify
from contract.text import unstorable

Channel = Literal["stable", "beta"]
CHANNELS: tuple[str, ...] = ("stable", "beta")
SHA_PATTERN = r"^[0-9a-f]{7,40}$"
SIGNATURE_PATTERN = r"^[0-9a-f]{64}$"
# For uploads only (NewRelease): reading a stored release never refuses it, whatever its size.
MAX_BREAKING_CHANGES_BYTES = 16 * 1024
# Semantic Versioning 2.0 as semver.org writes it: for the OpenAPI document (what clients and
# fuzzers generate from); parse_version is what checks a value.
SEMVER_PATTERN = (
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
# How `version` and timestamps are declared in the schema (docs/protocol.md §2).
VERSION_SCHEMA: dict[str, JsonValue] = {
    "format": "semver",
    "pattern": SEMVER_PATTERN,
    "examples": ["1.4.0", "2.0.0-rc.1"],
}
TIMESTAMP_SCHEMA: dict[str, JsonValue] = {
    "format": "date-time",
    "examples": ["2026-05-01T12:00:00Z"],
}


@functools.lru_cache(maxsize=4096)
def _parsed_version(value: str) -> semver.Version:
    return semver.Version.parse(value)


def parse_version(value: str) -> semver.Version:
    """Semantic Versioning 2.0; raises ValueError naming the problem. A fleet's polls name the
    same few versions over and over, and parsing one was a twentieth of a poll's CPU: each
    string is parsed once (a Version is not changed once made)."""
    try:
        return _parsed_version(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{value!r} is not a semantic version (e.g. 1.4.0 or 2.0.0-rc.1)") from exc


def parse_timestamp(value: str) -> datetime:
    """ISO 8601 with an explicit offset or Z; a naive timestamp is ambiguous across hosts."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an ISO 8601 timestamp") from exc
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no UTC offset (add Z or +00:00)")
    return parsed


class KeySignature(BaseModel):
    """A release key's signature (contract/release_keys.py) of the manifest's signed content."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    keyid: str = Field(pattern=r"^[0-9a-f]{16}$")
    sig: str = Field(pattern=r"^[A-Za-z0-9+/]{86}==$")  # base64 of 64 bytes


# Project extensions (docs/protocol.md §2): left out of a manifest's document and of what its HMAC
# covers when absent, so a manifest without them is signed and read exactly as PROTOCOL.md says.
EXTENSIONS = ("expires_at", "key_signatures")


class UnsignedManifest(BaseModel):
    """Every manifest field but the signature: what gets signed."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    version: str = Field(json_schema_extra=VERSION_SCHEMA)
    sha: str = Field(pattern=SHA_PATTERN)
    channel: Channel
    migrations_required: bool
    breaking_changes: str | None
    released_at: str = Field(json_schema_extra=TIMESTAMP_SCHEMA)
    # Agents refuse the release after this moment (a replayed old release cannot be run later).
    expires_at: str | None = Field(default=None, json_schema_extra=TIMESTAMP_SCHEMA)
    key_signatures: list[KeySignature] | None = Field(default=None, max_length=10)

    @field_validator("version")
    @classmethod
    def _semver(cls, value: str) -> str:
        parse_version(value)
        return value

    @field_validator("breaking_changes")
    @classmethod
    def _storable(cls, value: str | None) -> str | None:
        """Signed content is never altered: text PostgreSQL cannot store is refused instead."""
        if value is not None and unstorable(value):
            raise ValueError("contains NUL or an unpaired surrogate, which cannot be stored")
        return value

    @field_validator("released_at", "expires_at")
    @classmethod
    def _timestamp(cls, value: str | None) -> str | None:
        if value is not None:
            parse_timestamp(value)
        return value

    def _fields(self, *, without: tuple[str, ...] = ()) -> dict[str, Any]:
        fields = self.model_dump(mode="json", include=set(UnsignedManifest.model_fields))
        for name in EXTENSIONS:
            if fields[name] is None or name in without:
                del fields[name]
        return fields

    def signing_bytes(self) -> bytes:
        """What the HMAC `signature` covers: every field, the key signatures included."""
        return canonical(self._fields())

    def key_signing_bytes(self) -> bytes:
        """What a release key signs: every field but the signatures."""
        return canonical(self._fields(without=("key_signatures",)))

    def key_signed(self, private_pems: list[bytes]) -> "UnsignedManifest":
        """Signed by each release key (contract/release_keys.py), beside its earlier ones."""
        signatures = list(self.key_signatures or [])
        for pem in private_pems:
            keyid, sig = release_keys.sign(pem, self.key_signing_bytes())
            signatures.append(KeySignature(keyid=keyid, sig=sig))
        return self.model_copy(update={"key_signatures": signatures})

    def trusted_signatures(self, trusted: dict[str, str]) -> int:
        """How many distinct trusted keys (key id → public key) signed this content."""
        content = self.key_signing_bytes()
        valid = {
            s.keyid
            for s in self.key_signatures or ()
            if s.keyid in trusted and release_keys.verifies(trusted[s.keyid], content, s.sig)
        }
        return len(valid)

    def signed(self, secret: str) -> "ReleaseManifest":
        return ReleaseManifest(**self.model_dump(), signature=sign(secret, self.signing_bytes()))


class ReleaseManifest(UnsignedManifest):
    signature: str = Field(pattern=SIGNATURE_PATTERN)

    def has_valid_signature(self, secret: str) -> bool:
        return verify(secret, self.signing_bytes(), self.signature)

    @property
    def semver(self) -> semver.Version:
        return semver.Version.parse(self.version)

    def as_document(self) -> dict[str, Any]:
        return {**self._fields(), "signature": self.signature}


class NewRelease(ReleaseManifest):
    """A manifest being uploaded: bounded, since every poll of its jobs carries it."""

    @field_validator("breaking_changes")
    @classmethod
    def _bounded(cls, value: str | None) -> str | None:
        if value is not None and len(value.encode()) > MAX_BREAKING_CHANGES_BYTES:
            raise ValueError(f"longer than {MAX_BREAKING_CHANGES_BYTES} bytes")
        return value
