"""`rollout keys generate`: an Ed25519 release key pair (docs/security.md). The private key stays
where it is written (mode 0600), on the machine that signs releases; the public key is what hosts
trust (AGENT_RELEASE_KEYS) and the control plane checks uploads with (CONTROL_PLANE_RELEASE_KEYS).
"""

import argparse
import os
from pathlib import Path

from cli.errors import fail
from contract import release_keys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="offline release keys")
    actions = p.add_subparsers(dest="action", required=True)
    generate = actions.add_parser("generate", help="make an Ed25519 release key pair")
    generate.add_argument(
        "--out", type=Path, required=True, help="private key file to write (mode 0600); .pub beside"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    private, public = release_keys.generate()
    public_file = args.out.with_name(args.out.name + ".pub")
    try:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        fail(f"rollout keys generate: error: {args.out} exists; a key is never overwritten")
    except OSError as exc:
        fail(f"rollout keys generate: error: cannot write {args.out}: {exc.strerror}")
    with os.fdopen(fd, "wb") as file:
        file.write(private)
    public_file.write_text(public + "\n")
    print(f"key id {release_keys.key_id(public)}")
    print(f"private key {args.out} (keep it offline; mode 0600)")
    print(f"public key {public_file}: {public}")
    return 0
