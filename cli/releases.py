"""`rollout releases list|show|upload`."""

import argparse
import json
from pathlib import Path

from cli.admin_http import AdminApi, print_json, print_table
from cli.errors import fail

COLUMNS = [
    ("ID", "id"),
    ("VERSION", "version"),
    ("CHANNEL", "channel"),
    ("SHA", "sha"),
    ("MIGRATIONS", "migrations_required"),
    ("CREATED", "created_at"),
]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("releases", help="list, show and upload release manifests")
    actions = p.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list")
    listing.add_argument("--channel")
    show = actions.add_parser("show")
    show.add_argument("release_id")
    upload = actions.add_parser("upload", help="upload a manifest made by release-manifest")
    upload.add_argument("file", type=Path)
    for action in (listing, show, upload):
        action.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    api = AdminApi(f"rollout releases {args.action}")
    if args.action == "list":
        params = {"channel": args.channel} if args.channel else {}
        rows = api.call("GET", "/api/releases", params=params)
        print_json(rows) if args.json else print_table(rows, COLUMNS)
        return 0
    if args.action == "show":
        release = api.call("GET", f"/api/releases/{args.release_id}")
    else:
        try:
            manifest = json.loads(args.file.read_text())
        except (OSError, ValueError) as exc:
            fail(f"rollout releases upload: error: cannot read {args.file}: {exc}")
        release = api.call("POST", "/api/releases", json=manifest)
    print_json(release) if args.json else print_table([release], COLUMNS)
    return 0
