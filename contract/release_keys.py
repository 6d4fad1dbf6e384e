"""Offline release keys (Ed25519): a release signed with a key the control plane never holds, and
verified on the host (docs/security.md). A key is named by its id: the first 16 hex digits of the
SHA-256 of its raw public key. Public keys are written as base64 of their 32 raw bytes; private
keys as PKCS#8 PEM files, never sent anywhere."""

import base64
import binascii
import hashlib
from collections.abc import Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


class ReleaseKeyError(ValueError):
    """A key that cannot be read; the message says which and why."""


def key_id(public_b64: str) -> str:
    return hashlib.sha256(_raw_public(public_b64)).hexdigest()[:16]


def generate() -> tuple[bytes, str]:
    """(private key PEM, public key base64)."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return pem, base64.b64encode(raw).decode()


def sign(private_pem: bytes, data: bytes) -> tuple[str, str]:
    """(key id, signature as base64) of `data`."""
    try:
        private = serialization.load_pem_private_key(private_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ReleaseKeyError(f"not an unencrypted PEM private key ({exc})") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise ReleaseKeyError("not an Ed25519 private key")
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    public_b64 = base64.b64encode(raw).decode()
    return key_id(public_b64), base64.b64encode(private.sign(data)).decode()


def verifies(public_b64: str, data: bytes, signature_b64: str) -> bool:
    try:
        public = Ed25519PublicKey.from_public_bytes(_raw_public(public_b64))
        public.verify(base64.b64decode(signature_b64, validate=True), data)
    except (InvalidSignature, ReleaseKeyError, ValueError, binascii.Error):
        return False
    return True


def trusted(public_keys: Iterable[str]) -> dict[str, str]:
    """Key id → public key, from base64 public keys; raises ReleaseKeyError naming a bad one."""
    return {key_id(key): key for key in public_keys}


def parse_list(text: str) -> dict[str, str]:
    """`AGENT_RELEASE_KEYS` / `CONTROL_PLANE_RELEASE_KEYS`: base64 public keys, comma-separated."""
    return trusted(part.strip() for part in text.split(",") if part.strip())


def _raw_public(public_b64: str) -> bytes:
    try:
        raw = base64.b64decode(public_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ReleaseKeyError(f"{public_b64[:12]}…: not base64 ({exc})") from None
    if len(raw) != 32:
        raise ReleaseKeyError(f"{public_b64[:12]}…: not a 32-byte Ed25519 public key")
    return raw
