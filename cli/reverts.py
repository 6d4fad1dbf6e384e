"""`rollout rollouts revert ROLLOUT [--preview]`: take the hosts a rollout updated back to what
each ran before (docs/reverts.md)."""

import argparse

from cli.admin_http import AdminApi, print_json
from cli.rollout_view import render, render_revert_preview
from cli.terminal import terminal_safe

RESTORE_MODES = ("agent", "manual", "not_needed")


def add_parser(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser(
        "revert", help="take the hosts a rollout updated back to what each ran before"
    )
    p.add_argument("rollout_id")
    p.add_argument(
        "--preview", action="store_true", help="what the revert would do, starting nothing"
    )
    p.add_argument(
        "--restore",
        choices=RESTORE_MODES,
        help="how the data of a release with migrations comes back: each host's"
        " UPDATE_RESTORE_CMD (agent), by you (manual) or not at all (not_needed)",
    )
    p.add_argument("--restore-note", help="how, in your words (audited)")
    p.add_argument(
        "--freeze-override", metavar="REASON", help="run through a fleet freeze (audited)"
    )
    p.add_argument("--reason", help="why: recorded as the reverted rollout's abort reason")
    p.add_argument("--batch-size", type=int, help="hosts a batch (default: as the rollout's)")
    p.add_argument("--auto-advance", action="store_true")
    p.add_argument("--bake-seconds", type=int)
    p.add_argument("--max-failures", type=int, help="failed jobs tolerated (default 0)")


def run(api: AdminApi, args: argparse.Namespace) -> int:
    body = {
        "restore": args.restore,
        "restoreNote": args.restore_note,
        "freezeOverride": args.freeze_override,
        "reason": args.reason,
        "batchSize": args.batch_size,
        "autoAdvance": args.auto_advance or None,
        "bakeSeconds": args.bake_seconds,
        "maxFailures": args.max_failures,
    }
    body = {k: v for k, v in body.items() if v is not None}
    path = f"/api/rollouts/{args.rollout_id}/revert" + ("/preview" if args.preview else "")
    answer = api.call("POST", path, json=body)
    if args.json:
        print_json(answer)
    elif args.preview:
        print(render_revert_preview(answer))
    else:
        print(render(answer))
        print(terminal_safe(f"  follow it: rollout rollouts watch {answer['id']}"))
    return 0
