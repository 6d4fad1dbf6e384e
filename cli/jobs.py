"""`rollout jobs list`."""

import argparse

from cli.admin_http import AdminApi, print_json, print_table

COLUMNS = [
    ("JOB", "id"),
    ("ROLLOUT", "rolloutId"),
    ("INSTANCE", "instanceId"),
    ("BATCH", "batch"),
    ("STATUS", "status"),
    ("STEP", "step"),
    ("UPDATED", "updatedAt"),
    ("MESSAGE", "message"),
]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("jobs", help="update jobs across rollouts")
    actions = p.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list")
    listing.add_argument("--status")
    listing.add_argument("--rollout", dest="rollout_id")
    listing.add_argument("--instance", dest="instance_id")
    listing.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    api = AdminApi("rollout jobs list")
    filters = {"status": args.status, "rolloutId": args.rollout_id, "instanceId": args.instance_id}
    rows = api.call("GET", "/api/updates/jobs", params={k: v for k, v in filters.items() if v})
    print_json(rows) if args.json else print_table(rows, COLUMNS)
    return 0
