"""The words a rollout shows people: its one-line details (Web UI, read model, views) and the
reason it gives when failures or unreachable hosts pause it. Plain functions, so the state
machine and the workflow say things the same way."""

import re
from collections.abc import Iterable, Mapping

from workflows.rollout_models import AuditEvent, JobState

# Names (and a count) in a pause reason; the rest are in the jobs listing.
REASON_NAMES = 10
# Job statuses in the order the details line lists them, with their words.
STATUS_WORDS = (
    ("succeeded", "succeeded"),
    ("in_progress", "in progress"),
    ("pending", "pending"),
    ("failed", "failed"),
    ("rolled_back", "rolled back"),
    ("rollback_failed", "rollback failed"),
    ("timed_out", "timed out"),
    ("unreachable", "unreachable"),
    ("cancelled", "cancelled"),
)


def failure_note(job: JobState) -> str:
    """'web-7 rolled_back at smoke'."""
    return f"{job.instance_id} {job.status}" + (f" at {job.step}" if job.step else "")


def failure_reason(
    failures: int,
    current: Iterable[JobState],
    past_notes: list[str],
    max_failures: int,
    accepted_failures: int,
) -> str:
    """'2 jobs failed (max 1): web-7 failed at migrate; web-9 timed_out'."""
    notes = ([failure_note(job) for job in current] + past_notes)[:REASON_NAMES]
    if failures > len(notes):
        notes.append(f"and {failures - len(notes)} more")
    noun = "job" if failures == 1 else "jobs"
    return f"{failures} {noun} failed ({_limit(max_failures, accepted_failures)}): " + "; ".join(
        notes
    )


def unreachable_reason(count: int, names: list[str], max_unreachable: int, accepted: int) -> str:
    """'2 hosts unreachable (max 0): web-3, web-8'."""
    shown = names[:REASON_NAMES]
    if count > len(shown):
        shown.append(f"and {count - len(shown)} more")
    noun = "host" if count == 1 else "hosts"
    return f"{count} {noun} unreachable ({_limit(max_unreachable, accepted)}): " + ", ".join(shown)


def _limit(maximum: int, accepted: int) -> str:
    """'max 0', or 'max 0, 2 accepted' once a resume accepted more than the maximum."""
    return f"max {maximum}" + (f", {accepted} accepted" if accepted > maximum else "")


def details(
    *,
    status: str,
    paused_reason: str | None,
    note: str | None,
    hold_reason: str | None = None,
    late_joiners: int = 0,
    gates: str | None = None,
    current_batch: int,
    total_batches: int,
    counts: Mapping[str, int],
    plan: str | None = None,
) -> str:
    """One line for people: 'batch 3/10 · 4 succeeded · 1 in progress · paused: ...'; with a
    batch plan, what it is: '... · plan 1, 25%, 100%'."""
    parts = [f"batch {current_batch}/{total_batches}"]
    parts += [f"{counts[key]} {word}" for key, word in STATUS_WORDS if counts.get(key)]
    if status == "paused":
        parts.append(f"paused: {paused_reason}")
    elif status == "waiting":
        parts.append(hold_reason or "waiting")
    else:
        parts.append(status.replace("_", " "))
    if note:
        parts.append(note)
    if late_joiners:
        parts.append(f"{late_joiners} joined late")
    if gates:
        parts.append(gates)
    if plan:
        parts.append(f"plan {plan}")
    return " · ".join(parts)


def with_counts(details: str, counts: Mapping[str, int]) -> str:
    """A details line (`details`) with its job counts replaced by `counts`: for a line written
    before the jobs moved on (the stored view, while the workflow does not answer), so its
    counts agree with the jobs listed beside it. Everything else in the line stays."""
    batch, *rest = details.split(" · ")
    if not batch.startswith("batch "):
        return details  # not a line `details` made
    while rest and _COUNT.fullmatch(rest[0]):
        rest.pop(0)
    parts = [f"{counts[key]} {word}" for key, word in STATUS_WORDS if counts.get(key)]
    return " · ".join([batch, *parts, *rest])


# One count of a details line: '4 succeeded', '1 in progress'.
_COUNT = re.compile(r"[0-9]+ (?:" + "|".join(re.escape(word) for _, word in STATUS_WORDS) + ")")


def log_line(event: AuditEvent) -> str:
    """An audit event as the worker's log says it: 'running -> paused (why)', 'x by ops'."""
    detail = event.detail
    if event.action == "rollout.status_changed":
        reason = f" ({detail['reason']})" if "reason" in detail else ""
        return f"{detail['from']} -> {detail['to']}{reason}"
    return f"{event.action} by {event.actor}" + (f" {detail}" if detail else "")
