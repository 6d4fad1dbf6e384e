"""One job's story: preflight, the update steps, rollback on failure, and the final report.

The journal is written before every step, so an agent that dies mid-step finishes the story on
restart (`recover`): it rolls back what may be half done and reports, and never reruns the job.
A journal that cannot be written (StateDirUnusable) stops the story where it is: nothing more
runs, and the job is reported failed with the reason (`abandon`). A job the control plane ended
meanwhile (a refusal of its reports says so: agent/reports.py) stops like a SIGTERM: the step
under way finishes, no other runs, what ran is rolled back and the end is reported, which the
control plane records as the job's host outcome.
"""

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime

import semver

from agent.journal import Journal, Report
from agent.logs import InstanceLog
from agent.reports import ReportSender
from agent.state_dir import StateDirUnusable
from agent.steps import StepContext, StepExecutor, StepResult
from contract.downgrade import DowngradePermission
from contract.manifest import parse_timestamp
from contract.wire import MAX_MESSAGE_BYTES, UPDATE_STEPS, JobAssignment, ReportStatus, Step


def fit_message(sections: list[tuple[str, str]]) -> str:
    """Each section's headline, then the head and tail of its output, within the 4 KiB limit."""
    headlines = "\n".join(headline for headline, _ in sections)
    with_output = [output for _, output in sections if output.strip()]
    budget = MAX_MESSAGE_BYTES - len(headlines.encode()) - 64 * len(sections)
    share = max(0, budget // max(1, len(with_output)))
    parts: list[str] = []
    for headline, output in sections:
        parts.append(headline)
        parts.extend(_INDENT + line for line in excerpt(output, share))
    message = "\n".join(parts)
    return message.encode()[:MAX_MESSAGE_BYTES].decode(errors="ignore")


_INDENT = "  "
_CUT = "…"
_LEFT_OUT = f"{_CUT} (lines left out) {_CUT}"


def _size(line: str) -> int:
    return len(line.encode()) + len(_INDENT) + 1  # indented, and a newline


def excerpt(output: str, budget: int) -> list[str]:
    """The lines of a step's output within `budget` bytes once indented: all of them when they
    fit, else the head (what ran) and the tail (how it ended), with a line saying some were left
    out between them. A line too long for what is left is cut, never dropped whole."""
    lines = output.rstrip().splitlines()
    if sum(_size(line) for line in lines) <= budget:
        return lines
    head = _take(lines, budget if len(lines) == 1 else budget // 4, from_end=False)
    rest = lines[len(head) :]
    if not rest:
        return head
    left = budget - sum(_size(line) for line in head) - _size(_LEFT_OUT)
    if left < 0:
        return head
    tail = _take(rest[::-1], left, from_end=True)[::-1]
    return [*head, _LEFT_OUT, *tail] if len(tail) < len(rest) else head + tail


def _take(lines: list[str], budget: int, *, from_end: bool) -> list[str]:
    """Lines in the given order while they fit; the first one is cut to fit if it alone does
    not (its start kept, or its end when `from_end`)."""
    kept: list[str] = []
    used = 0
    for line in lines:
        if used + _size(line) <= budget:
            kept.append(line)
            used += _size(line)
            continue
        room = budget - _size(_CUT)
        if not kept and room > 0:
            raw = line.encode()
            cut = raw[len(raw) - room :] if from_end else raw[:room]
            text = cut.decode(errors="ignore")
            kept.append(_CUT + text if from_end else text + _CUT)
        break
    return kept


def _section(step: Step, result: StepResult) -> tuple[str, str]:
    """Output only of what failed: that is where the 4 KiB are worth spending."""
    if result.ok:
        return f"{step} ok: {result.summary}", ""
    return f"{step} failed: {result.summary}", result.output


def _ended_by(status: str) -> str:
    return f"the control plane ended the job ({status})"


_ONCE_WRITABLE = "the agent rolls it back when it starts with the directory writable again"


def _about(job: JobAssignment, step: str | None) -> dict[str, str | None]:
    """Log context: fields in JSON logs, so one job's story can be filtered out of many."""
    return {"job_id": job.id, "rollout_id": job.rolloutId, "step": step}


# How a release the host refuses itself begins its `failed` report's message (docs/security.md):
# no retry turns it into success, as the release is the same.
UNTRUSTED = "untrusted release"


class JobRunner:
    def __init__(
        self,
        *,
        channel: str,
        journal: Journal,
        instance_id: str,
        secret: str,
        release_keys: Mapping[str, str] | None = None,
        release_keys_threshold: int = 1,
        executor: StepExecutor,
        reports: ReportSender,
        stop: asyncio.Event,
        log: InstanceLog,
    ) -> None:
        self.channel = channel
        self.journal = journal
        # What a downgrade permission is checked against (contract.downgrade): this host, and
        # the secret the control plane signs for it.
        self.instance_id = instance_id
        self.secret = secret
        self.release_keys = release_keys or {}
        self.release_keys_threshold = release_keys_threshold
        self.executor = executor
        self.reports = reports
        self.stop = stop
        self.log = log
        # The job this run is telling the story of until its final report is submitted, and
        # the step the host last started for it (None: nothing yet; "rollback": a rollback).
        self._current: JobAssignment | None = None
        self._step: Step | None = None
        self._failed_step: Step | None = None  # what a rollback under way undoes

    def _enter(self, job: JobAssignment, step: Step) -> None:
        self.journal.enter_step(job, step)
        self._step = step
        self.log.info(
            "job %s: %s (%s)", job.id, step, job.manifest.version, extra=_about(job, step)
        )
        self.reports.submit(Report(jobId=job.id, status="in_progress", step=step))

    def _finish(
        self,
        job: JobAssignment,
        status: ReportStatus,
        step: Step,
        message: str,
        new_version: str | None = None,
    ) -> None:
        report = Report(jobId=job.id, status=status, step=step, message=message)
        try:
            self.journal.finish(report, new_version)
        finally:  # journalled or not, the story is over: the control plane hears how it ended
            self.log.info("job %s: %s at %s", job.id, status, step, extra=_about(job, step))
            self.reports.submit(report)
            self._current = None

    def _preflight_problem(self, job: JobAssignment) -> str | None:
        active = self.journal.state.active
        if active is not None and active.job.id != job.id:
            return f"another update (job {active.job.id}) is still running"
        if job.manifest.channel != self.channel:
            return f"release is for channel {job.manifest.channel}, this host is on {self.channel}"
        current = self.journal.state.current_version
        if job.downgrade is not None:
            refused = self._downgrade_refusal(job, job.downgrade, current)
            if refused is not None:
                return refused
        elif job.manifest.semver.compare(semver.Version.parse(current)) <= 0:
            return f"target {job.manifest.version} is not newer than current {current}"
        if parse_timestamp(job.deadline) <= datetime.now(UTC):
            return f"the job's deadline {job.deadline} has passed"
        return self._untrusted(job)

    def _downgrade_refusal(
        self, job: JobAssignment, permission: DowngradePermission, current: str
    ) -> str | None:
        """A revert's job goes down only with its own permission, signed for this host and
        this change (a forged one, or one lifted from another job, is refused), and, when it
        restores data, with the means to (docs/reverts.md)."""
        refused = permission.refusal(
            self.secret,
            job_id=job.id,
            instance_id=self.instance_id,
            current_version=current,
            manifest=job.manifest,
        )
        if refused is not None:
            return f"{UNTRUSTED}: downgrade permission refused: {refused}"
        if permission.restore == "agent":
            if not self.executor.can_restore:
                return "the revert restores data on this host, but UPDATE_RESTORE_CMD is not set"
            if current not in self.journal.state.backups:
                return (
                    "the revert restores data on this host, but its journal has no backup"
                    f" reference from its update to {current}"
                )
        return None

    def _context(self, job: JobAssignment, previous_version: str) -> StepContext:
        """What the job's commands are told; a revert's restore gets the backup its host took
        on the way up to the version it leaves."""
        backups = self.journal.state.backups
        return StepContext(
            job.id,
            job.manifest,
            previous_version,
            revert=job.downgrade is not None,
            backup_ref=backups.get(previous_version) if job.downgrade else None,
        )

    def _steps(self, job: JobAssignment) -> tuple[Step, ...]:
        """The update's steps; a revert that restores data restores it after the pull."""
        if job.downgrade is None or job.downgrade.restore != "agent":
            return UPDATE_STEPS
        at = UPDATE_STEPS.index("pull") + 1
        return (*UPDATE_STEPS[:at], "restore", *UPDATE_STEPS[at:])

    def _untrusted(self, job: JobAssignment) -> str | None:
        """Why this host refuses the release itself, whatever the control plane said: expired,
        or not signed by enough of the release keys it trusts (docs/security.md)."""
        manifest = job.manifest
        if manifest.expires_at is not None and parse_timestamp(manifest.expires_at) <= datetime.now(
            UTC
        ):
            return f"{UNTRUSTED}: release {manifest.version} expired at {manifest.expires_at}"
        if not self.release_keys:
            return None
        signed = manifest.trusted_signatures(dict(self.release_keys))
        if signed < self.release_keys_threshold:
            return (
                f"{UNTRUSTED}: release {manifest.version} is signed by {signed} of the release"
                f" keys this host trusts, {self.release_keys_threshold} needed"
                " (AGENT_RELEASE_KEYS); nothing was run"
            )
        return None

    async def run(self, job: JobAssignment) -> None:
        self._current, self._step = job, None
        problem = self._preflight_problem(job)
        if problem is not None:
            self.reports.submit(Report(jobId=job.id, status="in_progress", step="preflight"))
            self._finish(
                job, "failed", "preflight", f"preflight failed: {problem}; nothing changed"
            )
            return
        self._enter(job, "preflight")
        context = self._context(job, self.journal.state.current_version)
        done: list[tuple[str, str]] = []
        last: Step = "preflight"
        for step in self._steps(job):
            halted = self._halted(job)
            if halted is not None:
                await self._stopped(job, context, last, done, halted)
                return
            self._enter(job, step)
            result = await self.executor.run(step, context)
            last = step
            if not result.ok:
                self.log.warning(
                    "job %s: %s failed: %s", job.id, step, result.summary, extra=_about(job, step)
                )
                await self._roll_back(job, context, step, [*done, _section(step, result)])
                return
            if step == "backup":
                self.journal.note_backup(result.output)
            done.append(_section(step, result))
        ended = self.reports.ended.get(job.id)
        if ended is not None:  # heard only now: the update is undone all the same
            await self._stopped(job, context, last, done, _ended_by(ended))
            return
        went = "reverted" if job.downgrade is not None else "updated"
        summary = f"{went} from {context.previous_version} to {job.manifest.version}"
        self._finish(job, "succeeded", "health", summary, new_version=job.manifest.version)

    def _halted(self, job: JobAssignment) -> str | None:
        """Why no further step of `job` may run, if one may not."""
        ended = self.reports.ended.get(job.id)
        if ended is not None:
            return _ended_by(ended)
        return "agent stopping (SIGTERM)" if self.stop.is_set() else None

    async def _stopped(
        self,
        job: JobAssignment,
        context: StepContext,
        last: Step,
        done: list[tuple[str, str]],
        why: str,
    ) -> None:
        self.log.warning("job %s: %s after %s", job.id, why, last, extra=_about(job, last))
        if last == "preflight":
            message = f"{why} before the update started; nothing changed"
            self._finish(job, "failed", "preflight", message)
            return
        note = (f"{why} after {last} finished; the update was not completed", "")
        await self._roll_back(job, context, last, [*done, note])

    async def _roll_back(
        self,
        job: JobAssignment,
        context: StepContext,
        failed_step: Step,
        sections: list[tuple[str, str]],
    ) -> None:
        if not self.executor.can_roll_back:
            note = ("no UPDATE_ROLLBACK_CMD configured: not rolled back", "")
            self._finish(job, "failed", failed_step, fit_message([*sections, note]))
            return
        self.journal.enter_rollback(failed_step, fit_message(sections))
        self._step, self._failed_step = "rollback", failed_step
        self.log.info(
            "job %s: rollback after %s", job.id, failed_step, extra=_about(job, "rollback")
        )
        self.reports.submit(Report(jobId=job.id, status="in_progress", step="rollback"))
        result = await self.executor.run("rollback", context)
        status: ReportStatus = "rolled_back" if result.ok else "rollback_failed"
        self._finish(
            job, status, failed_step, fit_message([*sections, _section("rollback", result)])
        )

    async def recover(self) -> None:
        """Finish the story of a job the agent was running when it died."""
        active = self.journal.state.active
        if active is None:
            return
        job = active.job
        self._current, self._step, self._failed_step = job, active.step, active.failed_step
        context = self._context(job, active.previous_version)
        self.log.warning(
            "job %s: agent restarted during %s; finishing it",
            job.id,
            active.step,
            extra=_about(job, active.step),
        )
        if active.rolling_back:
            assert active.failed_step is not None
            before = ("before the restart:", active.failure or "")
            note = ("agent restarted during rollback; rollback run again", "")
            await self._roll_back(job, context, active.failed_step, [before, note])
        elif active.step == "preflight":
            message = "agent restarted during preflight; nothing changed"
            self._finish(job, "failed", "preflight", message)
        else:
            note = (f"agent restarted while {active.step} was running; it may be half done", "")
            await self._roll_back(job, context, active.step, [note])

    def abandon(self, error: StateDirUnusable) -> None:
        """The state directory stopped taking writes: nothing more is run, and the job in
        flight (this run's, or the one the journal says the previous run left) is reported
        failed at the step it reached, with the reason, without being journalled (the report
        still goes out while the agent can reach the control plane)."""
        job, step, failed_step = self._current, self._step, self._failed_step
        active = self.journal.state.active
        if job is None and active is not None:
            job, step, failed_step = active.job, active.step, active.failed_step
        if job is None:
            return
        self._current = None
        if step is None or step == "preflight":
            at: Step = "preflight"
            what = "nothing changed"
        elif step == "rollback":
            at = failed_step or "rollback"
            what = f"the rollback after {at} did not complete; {_ONCE_WRITABLE}"
        else:
            at = step
            what = f"no rollback was run: the host is as {step} left it; {_ONCE_WRITABLE}"
        self.log.error(
            "job %s: stopped at %s, reported failed: %s", job.id, at, error, extra=_about(job, at)
        )
        message = f"agent stopped: {error}; {what}"
        self.reports.submit(Report(jobId=job.id, status="failed", step=at, message=message))
