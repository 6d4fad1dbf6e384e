"""`rollout rollouts create|list|get|advance|pause|resume|retry|abort|watch`."""

import argparse
import sys
import time

from cli.admin_http import AdminApi, print_json, print_table
from cli.rollout_view import render
from contract.wire import FINISHED_ROLLOUT_STATUSES

COLUMNS = [
    ("ID", "id"),
    ("VERSION", "version"),
    ("CHANNEL", "channel"),
    ("STATUS", "status"),
    ("BATCH", "currentBatch"),
    ("OF", "totalBatches"),
    ("PAUSED REASON", "pausedReason"),
]
ACTIONS = ("advance", "pause", "resume", "retry", "abort")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rollouts", help="create, inspect, drive and watch rollouts")
    actions = p.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="start a rollout of a release to a channel")
    create.add_argument("--manifest", dest="manifest_id", required=True, help="release id")
    create.add_argument("--channel", required=True)
    create.add_argument("--batch-size", type=int, required=True)
    create.add_argument("--auto-advance", action="store_true")
    create.add_argument("--bake-seconds", type=int)
    create.add_argument("--max-failures", type=int, help="failed jobs tolerated (default 0)")
    create.add_argument(
        "--max-unreachable",
        type=int,
        help="hosts that never start their job by its deadline tolerated (default 0)",
    )
    create.add_argument("--job-timeout-seconds", type=int)
    listing = actions.add_parser("list")
    listing.add_argument("--channel")
    listing.add_argument("--status")
    get = actions.add_parser("get")
    get.add_argument("rollout_id")
    for name in ACTIONS:
        action = actions.add_parser(name, help=f"{name} a rollout")
        action.add_argument("rollout_id")
        if name in ("pause", "abort"):
            action.add_argument("--reason", help="recorded in the audit log and shown")
    watch = actions.add_parser("watch", help="live view until the rollout finishes")
    watch.add_argument("rollout_id")
    watch.add_argument("--interval", type=float, default=1.0)
    for action in actions.choices.values():
        action.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    api = AdminApi(f"rollout rollouts {args.action}")
    if args.action == "create":
        body = {
            "manifestId": args.manifest_id,
            "channel": args.channel,
            "batchSize": args.batch_size,
            "autoAdvance": args.auto_advance,
        }
        optional = {
            "bakeSeconds": args.bake_seconds,
            "maxFailures": args.max_failures,
            "maxUnreachable": args.max_unreachable,
            "jobTimeoutSeconds": args.job_timeout_seconds,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        return show(api.call("POST", "/api/rollouts", json=body), args.json)
    if args.action == "list":
        filters = {"channel": args.channel, "status": args.status}
        rows = api.call("GET", "/api/rollouts", params={k: v for k, v in filters.items() if v})
        print_json(rows) if args.json else print_table(rows, COLUMNS)
        return 0
    if args.action == "get":
        return show(api.call("GET", f"/api/rollouts/{args.rollout_id}"), args.json)
    if args.action == "watch":
        return watch(api, args.rollout_id, args.interval, args.json)
    reason = {"reason": args.reason} if getattr(args, "reason", None) else None
    rollout = api.call("POST", f"/api/rollouts/{args.rollout_id}/{args.action}", json=reason)
    return show(rollout, args.json)


def show(rollout: dict, as_json: bool) -> int:
    print_json(rollout) if as_json else print(render(rollout))
    return 0


def watch(api: AdminApi, rollout_id: str, interval: float, as_json: bool) -> int:
    """On a terminal, redraws in place; otherwise prints each new state once (logs, CI).

    Exits 0 when the rollout completes, 1 when it is aborted.
    """
    interactive = sys.stdout.isatty() and not as_json
    last = None
    while True:
        rollout = api.call("GET", f"/api/rollouts/{rollout_id}")
        view = render(rollout)
        if interactive:
            sys.stdout.write("\x1b[H\x1b[2J" + view + "\n")
            sys.stdout.flush()
        elif view != last:
            print_json(rollout) if as_json else print(view + "\n", flush=True)
        last = view
        if rollout["status"] in FINISHED_ROLLOUT_STATUSES:
            return 0 if rollout["status"] == "completed" else 1
        time.sleep(interval)
