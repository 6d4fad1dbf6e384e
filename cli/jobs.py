"""`rollout jobs list|show`."""

import argparse
from datetime import datetime
from typing import Any

from cli.admin_http import AdminApi, print_json, print_table
from cli.terminal import terminal_safe

COLUMNS = [
    ("JOB", "id"),
    ("ROLLOUT", "rolloutId"),
    ("INSTANCE", "instanceId"),
    ("BATCH", "batch"),
    ("STATUS", "status"),
    ("STEP", "step"),
    ("HOST", "hostOutcome"),
    ("UPDATED", "updatedAt"),
    ("MESSAGE", "message"),
]
TIMELINE_COLUMNS = [
    ("STEP", "step"),
    ("OUTCOME", "outcome"),
    ("STARTED", "startedAt"),
    ("ENDED", "endedAt"),
    ("TOOK", "took"),
]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("jobs", help="update jobs across rollouts")
    actions = p.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list")
    listing.add_argument("--status")
    listing.add_argument("--rollout", dest="rollout_id")
    listing.add_argument("--instance", dest="instance_id")
    show = actions.add_parser("show", help="one job and the timeline of its steps")
    show.add_argument("job_id")
    for action in actions.choices.values():
        action.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    api = AdminApi(f"rollout jobs {args.action}")
    if args.action == "show":
        job = api.call("GET", f"/api/updates/jobs/{args.job_id}")
        print_json(job) if args.json else show(job)
        return 0
    filters = {"status": args.status, "rolloutId": args.rollout_id, "instanceId": args.instance_id}
    rows = api.call("GET", "/api/updates/jobs", params={k: v for k, v in filters.items() if v})
    print_json(rows) if args.json else print_table(rows, COLUMNS)
    return 0


def _took(step: dict[str, Any]) -> str | None:
    if step.get("startedAt") is None or step.get("endedAt") is None:
        return None
    seconds = (
        datetime.fromisoformat(step["endedAt"]) - datetime.fromisoformat(step["startedAt"])
    ).total_seconds()
    return f"{seconds:.1f}s"


def host_outcome(job: dict[str, Any]) -> str:
    """What the host ended on, once the control plane had ended its job: `host rolled_back at
    backup`."""
    where = f" at {job['hostStep']}" if job.get("hostStep") else ""
    return f"host {job['hostOutcome']}{where}"


def show(job: dict[str, Any]) -> None:
    """The job, a line per step, then the output of each step that has some. Every field is
    the API's, and the output is the host's: all of it goes through cli.terminal."""
    where = f" at {job['step']}" if job.get("step") else ""
    head = [
        f"job {job['id']}  {job['status'].upper()}{where}",
        f"  rollout {job['rolloutId']}  batch {job['batch']}  attempt {job['attempt']}",
        f"  instance {job['instanceId']}  deadline {job['deadline']}",
    ]
    if job.get("hostOutcome"):
        head.append(f"  {host_outcome(job)} (reported after the job ended; its status stands)")
    print("\n".join(terminal_safe(line) for line in head))
    print()
    timeline = job.get("timeline", [])
    if not timeline:
        print("no step reported yet")
        return
    print_table([{**step, "took": _took(step)} for step in timeline], TIMELINE_COLUMNS)
    for step in timeline:
        if step.get("message"):
            print(terminal_safe(f"\n{step['step']} output:", multiline=True))
            output = terminal_safe(step["message"], multiline=True)
            print("\n".join("  " + line for line in output.splitlines()))
