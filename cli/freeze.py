"""`rollout freeze on|off|status`: stop the line on a channel or the whole fleet (docs/protocol.md,
fleet freeze)."""

import argparse

from cli.admin_http import AdminApi, print_json, print_table

COLUMNS = [("CHANNEL", "channel"), ("SINCE", "frozenAt"), ("BY", "frozenBy"), ("REASON", "reason")]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("freeze", help="stop (and restart) the line: no rollout moves while frozen")
    actions = p.add_subparsers(dest="action", required=True)
    on = actions.add_parser("on", help="freeze a channel, or every channel (audited)")
    on.add_argument("--reason", required=True, help="why: shown on every rollout it holds")
    off = actions.add_parser("off", help="lift the freeze of a channel, or the fleet-wide one")
    status = actions.add_parser("status", help="the freezes in force")
    for action in (on, off):
        action.add_argument("--channel", help="one channel (default: every channel)")
    for action in (on, off, status):
        action.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    api = AdminApi(f"rollout freeze {args.action}")
    if args.action == "on":
        body = {"reason": args.reason} | ({"channel": args.channel} if args.channel else {})
        answer = api.call("POST", "/api/freeze", json=body)
    elif args.action == "off":
        params = {"channel": args.channel} if args.channel else None
        answer = api.call("DELETE", "/api/freeze", params=params)
    else:
        answer = api.call("GET", "/api/freeze")
    if args.json:
        print_json(answer)
        return 0
    if answer["freezes"]:
        print_table(answer["freezes"], COLUMNS)
    else:
        print("not frozen")
    if answer["rollouts"]:
        verb = "waiting" if args.action == "on" else "released"
        print(f"rollouts {verb}: {', '.join(answer['rollouts'])}")
    return 0
