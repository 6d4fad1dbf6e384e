"""`rollout rollouts create|preview|list|get|advance|pause|resume|retry|abort|revert|watch`."""

import argparse
import json
import sys
import time
from typing import IO

from cli import reverts
from cli.admin_http import AdminApi, print_json, print_table
from cli.errors import fail
from cli.rollout_view import render, render_preview
from cli.windows import add_window_options, parse_window
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
    preview = actions.add_parser(
        "preview", help="what create would do with the same options, starting nothing"
    )
    for planned in (create, preview):
        _add_plan_options(planned)
    create.add_argument(
        "--preview", dest="preview_id", help="create exactly what this preview showed, or fail"
    )
    preview.add_argument("--batch", type=int, help="list this batch's hosts")
    preview.add_argument("--offset", type=int, help="hosts of the batch to skip")
    preview.add_argument("--limit", type=int, help="hosts of the batch to list (default 1000)")
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
        if name == "advance":
            action.add_argument(
                "--force", action="store_true", help="outside the maintenance window (audited)"
            )
    reverts.add_parser(actions)
    watch = actions.add_parser("watch", help="live view until the rollout finishes")
    watch.add_argument("rollout_id")
    watch.add_argument("--interval", type=float, default=1.0)
    for action in actions.choices.values():
        action.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def _add_plan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", dest="manifest_id", required=True, help="release id")
    p.add_argument("--channel", required=True)
    cut = p.add_mutually_exclusive_group(required=True)
    cut.add_argument("--batch-size", type=int, help="hosts a batch")
    cut.add_argument(
        "--plan",
        help='cumulative marks, hosts or percentages: "1,10%%,50%%,100%%" (docs/planning.md)',
    )
    cut.add_argument(
        "--exponential", metavar="FIRST:FACTOR", help='batches growing by FACTOR: "1:2"'
    )
    canary = p.add_mutually_exclusive_group()
    canary.add_argument(
        "--canary",
        action="store_true",
        default=None,
        help="one host first, in a batch of its own (the default for a release with migrations)",
    )
    canary.add_argument("--no-canary", dest="canary", action="store_false")
    p.add_argument("--auto-advance", action="store_true")
    p.add_argument("--bake-seconds", type=int)
    p.add_argument("--max-failures", type=int, help="failed jobs tolerated (default 0)")
    p.add_argument(
        "--max-unreachable",
        type=int,
        help="hosts that never start their job by its deadline tolerated (default 0)",
    )
    p.add_argument("--job-timeout-seconds", type=int)
    add_window_options(p)
    p.add_argument(
        "--gates-file",
        type=argparse.FileType(),
        help="health gates checked before each next batch: a JSON list (docs/notifications.md)",
    )
    p.add_argument("--gate-interval-seconds", type=int, help="how often through a bake (30)")
    p.add_argument(
        "--auto-revert",
        action="store_true",
        default=None,
        help="revert the hosts it updated if it is aborted or a health gate fails",
    )
    p.add_argument(
        "--auto-revert-restore",
        choices=("agent", "manual", "not_needed"),
        help="how data comes back in that revert (required for a release with migrations)",
    )
    p.add_argument(
        "--include-late-joiners",
        action="store_true",
        default=None,
        help="hosts joining the channel while it runs are updated by a later batch",
    )


def _gates(api: AdminApi, file: IO[str]) -> list:
    try:
        gates = json.load(file)
    except ValueError as exc:
        fail(f"{api.command}: error: --gates-file {file.name}: not JSON ({exc})")
    if not isinstance(gates, list):
        fail(f"{api.command}: error: --gates-file {file.name}: a JSON list of gates")
    return gates


def _marks(plan: str) -> list[int | str]:
    return [mark if mark.endswith("%") else int(mark) for mark in plan.replace(" ", "").split(",")]


def _exponential(text: str) -> dict[str, dict[str, float]]:
    first, _, factor = text.partition(":")
    return {"exponential": {"first": int(first), "factor": float(factor or 2)}}


def _planned(api: AdminApi, args: argparse.Namespace) -> dict:
    """The create (or preview) body the options say; a release with migrations gets a canary
    host first unless --no-canary."""
    plan: list[int | str] | dict[str, dict[str, float]] | None = None
    try:
        if args.plan:
            plan = _marks(args.plan)
        elif args.exponential:
            plan = _exponential(args.exponential)
    except ValueError:
        fail(
            f"{api.command}: error: --plan is hosts or percentages separated by commas, like"
            ' "1,10%,100%"; --exponential is FIRST:FACTOR, like "1:2"'
        )
    canary = args.canary
    if canary is None:
        release = api.call("GET", f"/api/releases/{args.manifest_id}")
        canary = bool(release.get("migrations_required"))
        if canary:
            print(
                "canary: one host first, as the release requires migrations (--no-canary to skip)",
                file=sys.stderr,
            )
    body = {
        "manifestId": args.manifest_id,
        "channel": args.channel,
        "batchSize": args.batch_size,
        "batchPlan": plan,
        "canary": canary,
        "autoAdvance": args.auto_advance,
        "bakeSeconds": args.bake_seconds,
        "maxFailures": args.max_failures,
        "maxUnreachable": args.max_unreachable,
        "jobTimeoutSeconds": args.job_timeout_seconds,
        "previewId": getattr(args, "preview_id", None),
        "includeLateJoiners": args.include_late_joiners,
        "autoRevert": args.auto_revert,
        "autoRevertRestore": args.auto_revert_restore,
        "window": parse_window(api.command, args.window, args.timezone) if args.window else None,
        "gates": _gates(api, args.gates_file) if args.gates_file else None,
        "gateIntervalSeconds": args.gate_interval_seconds,
    }
    return {k: v for k, v in body.items() if v is not None}


def run(args: argparse.Namespace) -> int:
    api = AdminApi(f"rollout rollouts {args.action}")
    if args.action == "create":
        return show(api.call("POST", "/api/rollouts", json=_planned(api, args)), args.json)
    if args.action == "preview":
        query = {"batch": args.batch, "offset": args.offset, "limit": args.limit}
        found = api.call(
            "POST",
            "/api/rollouts/preview",
            json=_planned(api, args),
            params={k: v for k, v in query.items() if v is not None},
        )
        print_json(found) if args.json else print(render_preview(found))
        return 0
    if args.action == "list":
        filters = {"channel": args.channel, "status": args.status}
        rows = api.call("GET", "/api/rollouts", params={k: v for k, v in filters.items() if v})
        print_json(rows) if args.json else print_table(rows, COLUMNS)
        return 0
    if args.action == "get":
        return show(api.call("GET", f"/api/rollouts/{args.rollout_id}"), args.json)
    if args.action == "watch":
        return watch(api, args.rollout_id, args.interval, args.json)
    if args.action == "revert":
        return reverts.run(api, args)
    body = {"reason": args.reason} if getattr(args, "reason", None) else {}
    if getattr(args, "force", False):
        body["force"] = True
    rollout = api.call("POST", f"/api/rollouts/{args.rollout_id}/{args.action}", json=body or None)
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
