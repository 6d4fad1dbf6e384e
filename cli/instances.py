"""`rollout instances list`."""

import argparse

from cli.admin_http import AdminApi, print_json, print_table

COLUMNS = [
    ("INSTANCE", "instanceId"),
    ("CHANNEL", "channel"),
    ("VERSION", "currentVersion"),
    ("AGENT", "agentVersion"),
    ("LAST SEEN", "lastSeenAt"),
]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("instances", help="the fleet as agents report it")
    actions = p.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list")
    listing.add_argument("--channel")
    listing.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    api = AdminApi("rollout instances list")
    rows = api.call(
        "GET", "/api/instances", params={"channel": args.channel} if args.channel else {}
    )
    print_json(rows) if args.json else print_table(rows, COLUMNS)
    return 0
