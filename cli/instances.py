"""`rollout instances list|show|decommission|admit|hold|release`: the fleet registry and each
instance's lifecycle (docs/protocol.md, instances), and holds out of new rollouts."""

import argparse

from cli.admin_http import AdminApi, print_json, print_table

COLUMNS = [
    ("INSTANCE", "instanceId"),
    ("CHANNEL", "channel"),
    ("VERSION", "currentVersion"),
    ("AGENT", "agentVersion"),
    ("STATE", "state"),
    ("LAST SEEN", "lastSeenAt"),
    ("ON HOLD", "holdReason"),
]
TOTAL_HEADER = "x-total-count"
# Each command on one instance: its request's method and the path after the instance's.
LIFECYCLE = {
    "show": ("GET", ""),
    "decommission": ("DELETE", ""),
    "admit": ("POST", "/admit"),
    "hold": ("POST", "/hold"),
    "release": ("DELETE", "/hold"),
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("instances", help="the fleet as agents report it, and its lifecycle")
    actions = p.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="a page of instances, in id order")
    listing.add_argument("--channel")
    listing.add_argument("--state", choices=("active", "pending", "decommissioned"))
    listing.add_argument("--version", help="only instances at this current version")
    listing.add_argument(
        "--not-seen-for", type=int, metavar="SECONDS", help="only those whose last poll is older"
    )
    listing.add_argument("--limit", type=int, help="page size (API default 500, at most 10000)")
    listing.add_argument("--offset", type=int, help="instances to skip")
    show = actions.add_parser("show", help="one instance")
    decommission = actions.add_parser(
        "decommission", help="refuse its polls and leave it out of new rollouts (audited)"
    )
    admit = actions.add_parser(
        "admit", help="approve a pending instance, or take a decommissioned one back (audited)"
    )
    hold = actions.add_parser("hold", help="leave it out of new rollouts until released (audited)")
    hold.add_argument("--reason", required=True, help="why: shown in listings and previews")
    release = actions.add_parser("release", help="release its hold (audited)")
    for action in (show, decommission, admit, hold, release):
        action.add_argument("instance_id")
    for action in actions.choices.values():
        action.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    api = AdminApi(f"rollout instances {args.action}")
    if args.action == "list":
        return listing(api, args)
    method, suffix = LIFECYCLE[args.action]
    body = {"reason": args.reason} if args.action == "hold" else None
    instance = api.call(method, f"/api/instances/{args.instance_id}{suffix}", json=body)
    print_json(instance) if args.json else print_table([instance], COLUMNS)
    return 0


def listing(api: AdminApi, args: argparse.Namespace) -> int:
    filters = {
        "channel": args.channel,
        "state": args.state,
        "version": args.version,
        "notSeenForSeconds": args.not_seen_for,
        "limit": args.limit,
        "offset": args.offset,
    }
    answer = api.answer(
        "GET", "/api/instances", params={k: v for k, v in filters.items() if v is not None}
    )
    rows = answer.json()
    if args.json:
        print_json(rows)
        return 0
    print_table(rows, COLUMNS)
    total = int(answer.headers.get(TOTAL_HEADER, len(rows)))
    first, shown = (args.offset or 0) + 1, len(rows)
    if first > 1 or shown < total:
        last = first + shown - 1
        more = f"; --offset {last} for the next page" if last < total else ""
        print(f"({shown} of {total} instances, from number {first}{more})")
    return 0
