"""The read model's write-behind: what the rollout state machine changed reaches PostgreSQL
through the `record_progress` activity, a batch of changes at a time, one writer at a time.

Workflow code (it runs activities), kept apart from the run loop: the workflow hands it each
call's `Effects` and says when to write. What is not written yet when a run continues as new is
carried in `RolloutState.unwritten_*`, and written by the next run.
"""

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities.rollouts import RolloutActivities
    from domain.jobs import JobWrite
    from domain.rollouts import RolloutProgress
    from workflows.activity_options import ACTIVITY_RETRY, CHUNK_TIMEOUT, HEARTBEAT_TIMEOUT
    from workflows.rollout_machine import Effects, RolloutMachine
    from workflows.rollout_models import (
        AuditEvent,
        JobState,
        RecordProgressInput,
        RolloutState,
    )

# Job rows per activity call: keeps every payload far below Temporal's 2 MiB limit.
JOBS_PER_WRITE = 500
# The workflow keeps only the head of a report's message; the full text is in job_reports.
MESSAGE_LIMIT = 1024
# What a cancel request raises where the run awaits (checked with is_cancelled_exception).
CANCELLATION = (asyncio.CancelledError, ActivityError)


class ReadModelWriter:
    def __init__(self, spec_id: str, state: RolloutState) -> None:
        self._rollout_id = spec_id
        self._dirty: set[str] = set(state.unwritten_jobs)
        self._messages: dict[str, str] = dict(state.unwritten_messages)
        self._events: list[AuditEvent] = list(state.unwritten_events)
        self._row_dirty = True
        self._revision = state.revision
        self._closing = False
        self._lock = asyncio.Lock()
        # Changes with audit events (status changes, admin actions) recorded in this run, how
        # many of them the rollout's row in PostgreSQL shows, and the most an action waits for
        # (`caught_up`). Job rows may follow in later writes (JOBS_PER_WRITE).
        self._recorded = 0
        self._written = 0
        self._awaited = 0

    def record(self, fx: Effects) -> None:
        """Remember what changed, to write it with the next write."""
        self._events += fx.events
        self._row_dirty = self._row_dirty or bool(fx.events)
        self._dirty |= fx.jobs
        for job_id, message in fx.messages.items():
            self._messages[job_id] = message[:MESSAGE_LIMIT]
        if fx.events:  # every status change and admin action has its audit event
            self._recorded += 1

    def close(self) -> None:
        """The run is ending: the rollout's row says so with the next write."""
        self._closing = True
        self._row_dirty = True

    @property
    def unwritten_jobs(self) -> set[str]:
        """Ids of jobs whose change the read model does not show yet."""
        return self._dirty

    @property
    def unwritten(self) -> bool:
        return bool(self._dirty or self._events or self._row_dirty)

    @property
    def awaited(self) -> bool:
        """An action waits for a write (`caught_up`): the run loop must write, even while it
        waits for handlers to finish."""
        return self._awaited > self._written

    async def caught_up(self, timeout: timedelta, purpose: str) -> bool:
        """Whether the rollout's row in PostgreSQL shows every change recorded so far, within
        `timeout` (a durable timer, summarised with `purpose`): an admin action is answered when
        the read model, which answers agents' polls, shows it, or, should PostgreSQL not take
        the write, after `timeout`."""
        target = self._recorded
        self._awaited = max(self._awaited, target)
        summary = f"{purpose} once written, at most {timeout.total_seconds():g} s"
        try:
            await workflow.wait_condition(
                lambda: self._written >= target, timeout=timeout, timeout_summary=summary
            )
        except TimeoutError:
            return False
        return True

    def carry(self, state: RolloutState) -> None:
        """Into the state the next run starts from (continue-as-new)."""
        state.revision = self._revision
        state.unwritten_jobs = sorted(self._dirty)
        state.unwritten_messages = dict(self._messages)
        state.unwritten_events = list(self._events)

    async def write(self, machine: RolloutMachine, new_jobs: list[JobState] | None = None) -> None:
        """Write what changed to PostgreSQL, one writer at a time.

        A release (`new_jobs`) writes every change, as the batch it closes is folded away
        after. Otherwise at most JOBS_PER_WRITE changed jobs per call: the run loop gets back
        quickly to its continue-as-new check while reports pour in; the rest follows next turn.
        """
        async with self._lock:
            if not self.unwritten and not new_jobs:
                self._written = self._recorded
                return
            batch = sorted(self._dirty)
            if new_jobs is None:
                batch = batch[:JOBS_PER_WRITE]
            self._dirty.difference_update(batch)
            dirty = [machine.jobs[job_id] for job_id in batch if job_id in machine.jobs]
            writes = [self._job_write(job) for job in dirty + (new_jobs or [])]
            events, self._events = self._events, []
            covers = self._recorded  # every status change so far goes with this write's row
            self._row_dirty = False
            self._revision += 1
            progress = self._progress(machine)
            chunks = [writes[i : i + JOBS_PER_WRITE] for i in range(0, len(writes), JOBS_PER_WRITE)]
            chunks = chunks or [[]]
            # The rollout's row and its events go with the first chunk: a pause or abort commits
            # with the first of a large release's job rows, never after them, so polls (answered
            # from the rows) never see those jobs without it. A closing write's row goes last: a
            # row marked closed is final, every job row written.
            row_chunk = len(chunks) - 1 if self._closing else 0
            row_sent = False
            try:
                for index, chunk in enumerate(chunks):
                    carries_row = index == row_chunk
                    summary = _summary(progress, chunk, carries_row, bool(new_jobs))
                    await workflow.execute_activity_method(
                        RolloutActivities.record_progress,
                        RecordProgressInput(
                            progress=progress if carries_row else None,
                            jobs=chunk,
                            events=events if carries_row else [],
                        ),
                        start_to_close_timeout=CHUNK_TIMEOUT,
                        heartbeat_timeout=HEARTBEAT_TIMEOUT,
                        retry_policy=ACTIVITY_RETRY,
                        summary=summary,
                    )
                    if carries_row:
                        row_sent = True
                        self._written = max(self._written, covers)
            except CANCELLATION as err:
                if not is_cancelled_exception(err):
                    raise
                # The run was asked to cancel mid-write: what this write carried is written
                # again by the final write (job rows and the revision gate make that safe;
                # events already written are not written twice).
                self._dirty.update(batch)
                if not row_sent:
                    self._events = events + self._events
                self._row_dirty = True
                raise

    def _job_write(self, job: JobState) -> JobWrite:
        return JobWrite(
            id=job.id,
            rollout_id=self._rollout_id,
            instance_id=job.instance_id,
            batch=job.batch,
            attempt=job.attempt,
            status=job.status,
            step=job.step,
            message=self._messages.pop(job.id, None),
            deadline=job.deadline,
        )

    def _progress(self, machine: RolloutMachine) -> RolloutProgress:
        return RolloutProgress(
            **machine.snapshot().model_dump(),
            id=self._rollout_id,
            revision=self._revision,
            workflow_closed=self._closing,
        )


def _summary(progress: RolloutProgress, jobs: list[JobWrite], row: bool, new: bool) -> str:
    """What a write is, for its activity's line in the Web UI: 'write batch 2: 500 new jobs,
    status running'."""
    batch = jobs[0].batch if jobs else progress.current_batch
    parts = [f"{len(jobs)} {'new jobs' if new else 'jobs'}"] if jobs else []
    if row:
        parts.append(
            f"status {progress.status}" + (", closing" if progress.workflow_closed else "")
        )
    return f"write batch {batch}: " + ", ".join(parts)
