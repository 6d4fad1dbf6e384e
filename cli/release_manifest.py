"""`rollout release-manifest`: sign a release manifest for `POST /api/releases` (PROTOCOL §2)."""

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from cli.errors import fail
from contract import release_keys
from contract.manifest import CHANNELS, UnsignedManifest
from contract.signing import canonical

SECRET_ENV = "RELEASE_SIGNING_SECRET"  # noqa: S105 (a variable name, not a secret)


def _bool(value: str) -> bool:
    lowered = value.lower()
    if lowered not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    return lowered == "true"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "release-manifest",
        help="make a signed release manifest",
        description=f"Make a signed release manifest. The secret comes from ${SECRET_ENV}.",
    )
    p.add_argument("--version", required=True, help="semantic version, e.g. 1.4.0")
    p.add_argument("--sha", required=True, help="git commit, 7 to 40 lowercase hex characters")
    p.add_argument("--channel", required=True, help=" or ".join(CHANNELS))
    p.add_argument("--migrations-required", required=True, type=_bool, metavar="true|false")
    p.add_argument("--breaking-changes", default=None, metavar="TEXT")
    p.add_argument("--released-at", default=None, help="ISO 8601 with offset; default now")
    p.add_argument("--out", type=Path, default=None, help="file to write; default stdout")
    p.add_argument(
        "--sign-key",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="an Ed25519 release key (rollout keys generate) that signs it too; repeat for more",
    )
    p.add_argument("--expires-at", default=None, help="ISO 8601: hosts refuse it after this")
    p.set_defaults(func=run)


def _field_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    field = str(error["loc"][0]) if error["loc"] else "manifest"
    flag = "--" + field.replace("_", "-")
    return f"{flag}: {str(error['msg']).removeprefix('Value error, ')}"


def _private_key(path: Path) -> bytes:
    try:
        pem = path.read_bytes()
        release_keys.sign(pem, b"")  # readable as an Ed25519 key, or say so now
    except OSError as exc:
        fail(f"rollout release-manifest: error: cannot read --sign-key {path}: {exc.strerror}")
    except release_keys.ReleaseKeyError as exc:
        fail(f"rollout release-manifest: error: --sign-key {path}: {exc}")
    return pem


def run(args: argparse.Namespace) -> int:
    secret = os.environ.get(SECRET_ENV, "")
    if not secret:
        fail(f"rollout release-manifest: error: {SECRET_ENV} is not set")
    released_at = args.released_at or datetime.now(UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z"
    )
    try:
        unsigned = UnsignedManifest(
            version=args.version,
            sha=args.sha,
            channel=args.channel,
            migrations_required=args.migrations_required,
            breaking_changes=args.breaking_changes,
            released_at=released_at,
            expires_at=args.expires_at,
        )
    except ValidationError as exc:
        fail(f"rollout release-manifest: error: {_field_problem(exc)}")
    if args.sign_key:
        unsigned = unsigned.key_signed([_private_key(path) for path in args.sign_key])
    text = canonical(unsigned.signed(secret).as_document()).decode() + "\n"
    if args.out is None:
        sys.stdout.write(text)
        return 0
    try:
        args.out.write_text(text)
    except OSError as exc:
        fail(f"rollout release-manifest: error: cannot write --out {args.out}: {exc.strerror}")
    return 0
