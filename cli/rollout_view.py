"""Text rendering of a rollout, like `kubectl argo rollouts get rollout`: a bar per batch."""

from collections import Counter
from typing import Any

from cli.jobs import host_outcome
from cli.terminal import terminal_safe

SETTLED_OK = {"succeeded"}
FAILED = {"failed", "rolled_back", "rollback_failed", "timed_out"}
UNREACHABLE = "unreachable"  # never polled for its job: counted apart from the failures
BAR_WIDTH = 20
# Jobs the control plane ended whose host told its own end later: a line each, this many at most.
HOST_OUTCOME_LINES = 10


def bar(done: int, failed: int, unreachable: int, total: int) -> str:
    """`#` succeeded, `x` failed, `?` unreachable, `-` still to go."""
    if total == 0:
        return "[" + " " * BAR_WIDTH + "]"
    cells = [round(BAR_WIDTH * n / total) for n in (done, failed, unreachable)]
    drawn = "".join(mark * n for mark, n in zip("#x?", cells, strict=True))
    return "[" + drawn + "-" * (BAR_WIDTH - sum(cells)) + "]"


def latest_attempts(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A retry adds a job per failed host; the bar counts each host once, by its newest job."""
    newest: dict[str, dict[str, Any]] = {}
    for job in jobs:
        seen = newest.get(job["instanceId"])
        if seen is None or job.get("attempt", 1) > seen.get("attempt", 1):
            newest[job["instanceId"]] = job
    return list(newest.values())


def batch_line(batch: dict[str, Any]) -> str:
    jobs = latest_attempts(batch.get("jobs", []))
    counts = Counter(job["status"] for job in jobs)
    done = sum(counts[s] for s in SETTLED_OK)
    failed = sum(counts[s] for s in FAILED)
    if not jobs:
        size = f" ({batch['size']} hosts)" if "size" in batch else ""
        return f"  batch {batch['number']:>3}  {bar(0, 0, 0, 0)}  not released{size}"
    others = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()) if s not in SETTLED_OK)
    summary = f"{done}/{len(jobs)} succeeded" + (f", {others}" if others else "")
    drawn = bar(done, failed, counts[UNREACHABLE], len(jobs))
    return f"  batch {batch['number']:>3}  {drawn}  {summary}"


def failure_line(failure: dict[str, Any]) -> str:
    """Where a failed job of the current batch stopped; its output is one command away."""
    where = f" at {failure['step']}" if failure.get("step") else " (never started)"
    return (
        f"  {failure['instanceId']} {failure['status']}{where}:"
        f" rollout jobs show {failure['jobId']}"
    )


def host_outcome_lines(rollout: dict[str, Any]) -> list[str]:
    """The hosts that went on with a job the control plane had ended, and how they ended."""
    jobs = [
        j for b in rollout.get("batches", []) for j in b.get("jobs", []) if j.get("hostOutcome")
    ]
    lines = [
        f"  {j['instanceId']} {j['status']}; {host_outcome(j)}: rollout jobs show {j['id']}"
        for j in jobs[:HOST_OUTCOME_LINES]
    ]
    if len(jobs) > HOST_OUTCOME_LINES:
        lines.append(
            f"  … and {len(jobs) - HOST_OUTCOME_LINES} more hosts with an outcome of their own"
        )
    return lines


def left_out_line(entry: dict[str, Any]) -> str:
    """Hosts of the channel the rollout did not target when it started, and why."""
    count, shown = entry["count"], entry.get("instances", [])
    names = ", ".join(shown) + (", …" if count > len(shown) else "")
    hosts = "host" if count == 1 else "hosts"
    return f"  left out: {count} {hosts} {entry['description']}: {names}"


def render_preview(preview: dict[str, Any]) -> str:
    """What `rollouts create` would do with the same options, batch by batch."""
    seconds = preview["prediction"]["seconds"]
    lines = [
        f"preview {preview['previewId']}  {preview['version']} -> {preview['channel']}"
        f"  {preview['targetCount']} hosts in {len(preview['batches'])} batches,"
        f" about {_duration(seconds)}",
    ]
    for batch in preview["batches"]:
        first = batch["firstHosts"]
        more = ", …" if batch["size"] > len(first) else ""
        lines.append(
            f"  batch {batch['number']:>3}  {batch['size']:>6} hosts  {', '.join(first)}{more}"
        )
    if preview.get("hosts") is not None:
        lines.append("  hosts: " + ", ".join(preview["hosts"]))
    if preview.get("alreadyCurrent"):
        lines.append(f"  already at {preview['version']} or above: {preview['alreadyCurrent']}")
    lines += [left_out_line(entry) for entry in preview.get("leftOut", [])]
    lines += [f"  assumed: {text}" for text in preview["prediction"]["assumptions"]]
    lines += [f"  warning: {text}" for text in preview.get("warnings", [])]
    lines.append(
        f"  create exactly this: rollout rollouts create ... --preview {preview['previewId']}"
    )
    return "\n".join(terminal_safe(line) for line in lines)


def render_revert_preview(preview: dict[str, Any]) -> str:
    """What `rollouts revert` would do: who goes back to what, who does not and why."""
    lines = [
        f"revert of rollout {preview['revertOf']}: {preview['targetCount']} hosts leave"
        f" {preview['version']} in {len(preview['batches'])} batches",
    ]
    lines += [
        f"  back to {t['version']} (release {t['releaseId']}): {t['hosts']} hosts"
        for t in preview["targets"]
    ]
    lines += [left_out_line(entry) for entry in preview.get("leftOut", [])]
    lines += [f"  warning: {text}" for text in preview.get("warnings", [])]
    return "\n".join(terminal_safe(line) for line in lines)


def revert_lines(rollout: dict[str, Any]) -> list[str]:
    """A revert and the rollout it reverts are one story: each view names the other."""
    lines = []
    if rollout.get("revertOf"):
        restore = rollout.get("restore")
        lines.append(
            f"  revert of rollout {rollout['revertOf']}: hosts back to what each ran before"
            + (f"; data restore: {restore}" if restore else "")
            + (f" ({rollout['restoreNote']})" if rollout.get("restoreNote") else "")
        )
    if rollout.get("freezeOverride"):
        lines.append(f"  runs through fleet freezes: {rollout['freezeOverride']}")
    if rollout.get("revertedBy"):
        lines.append(f"  reverted by rollout {rollout['revertedBy']}")
    return lines


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {rest:02d} s"


def render(rollout: dict[str, Any]) -> str:
    total = rollout.get("totalBatches", len(rollout.get("batches", [])))
    head = (
        f"rollout {rollout['id']}  {rollout.get('version')} -> {rollout.get('channel')}"
        f"  {rollout['status'].upper()}  batch {rollout.get('currentBatch')}/{total}"
    )
    lines = [head, *revert_lines(rollout)]
    lines += [batch_line(b) for b in rollout.get("batches", [])]
    if rollout.get("pausedReason"):
        lines.append(f"  paused: {rollout['pausedReason']}")
    if rollout["status"] == "waiting":
        lines.append(f"  {rollout.get('details', 'waiting')}")
    lines += [left_out_line(entry) for entry in rollout.get("leftOut", [])]
    lines += [failure_line(f) for f in rollout.get("failures", [])]
    lines += host_outcome_lines(rollout)
    if rollout.get("stale"):
        lines.append("  (stale: the rollout engine did not answer; this is the last stored view)")
    # A pause reason is anyone's text, a failure names what a host reported: each line is made
    # inert as a whole, so an escape or a newline in a field cannot draw over the view.
    return "\n".join(terminal_safe(line) for line in lines)
