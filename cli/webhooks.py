"""`rollout webhooks add|list|remove|deliveries|redeliver`: signed notifications of rollout events
(docs/notifications.md)."""

import argparse

from cli.admin_http import AdminApi, print_json, print_table

ENDPOINTS = [("ID", "id"), ("URL", "url"), ("EVENTS", "events"), ("SINCE", "createdAt")]
DELIVERIES = [
    ("ID", "id"),
    ("EVENT", "event"),
    ("STATUS", "status"),
    ("ATTEMPTS", "attempts"),
    ("LAST", "lastStatus"),
    ("ERROR", "lastError"),
    ("AT", "createdAt"),
]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("webhooks", help="signed notifications of rollout events")
    actions = p.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="send these events to a URL (prints its secret once)")
    add.add_argument("--url", required=True)
    add.add_argument(
        "--event",
        action="append",
        required=True,
        help="rollout.status_changed, fleet.frozen, job.failed, ... or * (repeat for more)",
    )
    actions.add_parser("list", help="the endpoints")
    remove = actions.add_parser("remove", help="stop sending to an endpoint")
    remove.add_argument("webhook_id")
    deliveries = actions.add_parser("deliveries", help="the latest deliveries, newest first")
    deliveries.add_argument("--status", choices=("pending", "delivered", "failed"))
    deliveries.add_argument("--webhook", dest="webhook_id")
    deliveries.add_argument("--limit", type=int)
    redeliver = actions.add_parser("redeliver", help="send a delivery again")
    redeliver.add_argument("delivery_id")
    for action in actions.choices.values():
        action.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    api = AdminApi(f"rollout webhooks {args.action}")
    if args.action == "add":
        added = api.call("POST", "/api/webhooks", json={"url": args.url, "events": args.event})
        if args.json:
            print_json(added)
        else:
            print_table([added], ENDPOINTS)
            print(f"secret (shown once; the receiver verifies with it): {added['secret']}")
        return 0
    if args.action == "remove":
        api.answer("DELETE", f"/api/webhooks/{args.webhook_id}")
        print(f"removed {args.webhook_id}")
        return 0
    if args.action == "redeliver":
        again = api.call("POST", f"/api/webhooks/deliveries/{args.delivery_id}/redeliver")
        print_json(again) if args.json else print_table([again], DELIVERIES)
        return 0
    if args.action == "list":
        rows, columns = api.call("GET", "/api/webhooks"), ENDPOINTS
    else:
        filters = {"status": args.status, "webhookId": args.webhook_id, "limit": args.limit}
        params = {k: v for k, v in filters.items() if v is not None}
        rows, columns = api.call("GET", "/api/webhooks/deliveries", params=params), DELIVERIES
    print_json(rows) if args.json else print_table(rows, columns)
    return 0
