"""Rollouts: the create saga, the view (read model with the workflow's live state laid over
it) and the admin actions, in domain terms. api/routers/rollouts.py maps them to HTTP.

When Temporal or the worker does not answer quickly, a view is the stored one, marked stale,
rather than an error.
"""

import contextlib
import uuid
from collections import Counter
from typing import Literal, Self

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from temporalio.client import Client

from contract.downgrade import RestoreMode
from contract.manifest import Channel
from contract.wire import ID_PATTERN
from domain.gates import Gate
from domain.plans import MAX_BATCH_SIZE, BatchPlan, Exponential, Marks
from domain.rollouts import RolloutSnapshot, RolloutSpec
from domain.windows import MaintenanceWindow
from services import freezes, previews
from services.errors import Conflict, Invalid, NotFound
from services.timeline import JobFacts, JobFailure, failing_jobs, job_failure
from store import audit, channel_windows, job_reports, jobs, rollouts
from store.jobs import Job
from store.releases import Release
from store.rollouts import ChannelBusy, Rollout
from temporal_client import rollouts as rollout_client
from temporal_client.rollouts import RolloutGone, RolloutUnavailable
from workflows import rollout_text
from workflows.rollout_machine import Action
from workflows.rollout_models import JobState

# A live view must not hold an HTTP request long: the stored view answers instead.
LIVE_VIEW_TIMEOUT = 3.0
# Starting waits until batch 1 is handed out; actions until the workflow accepted them.
START_TIMEOUT = 30.0
ACTION_TIMEOUT = 15.0


# Bounds of the integer fields (docs/protocol.md): a fleet is at most this many instances.
MAX_FLEET = 100_000


class ExponentialPlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    exponential: Exponential


class RolloutControls(BaseModel):
    """How any rollout runs, a revert's too (PROTOCOL §4), within the documented bounds.

    Batches are cut by `batch_size` (the contract), or by `batch_plan` (docs/planning.md):
    cumulative marks in hosts or percentages, or exponential growth; `canary` puts one host in
    a batch of its own first."""

    batch_size: int | None = Field(default=None, ge=1, le=MAX_BATCH_SIZE)
    batch_plan: Marks | ExponentialPlan | None = None
    canary: bool = False
    # None: the channel's default window (services/windows.py), if it has one.
    window: MaintenanceWindow | None = None
    # Checked after each batch settles and through its bake; a failing one pauses (domain.gates).
    gates: list[Gate] = Field(default_factory=list, max_length=10)
    gate_interval_seconds: int = Field(default=30, ge=1, le=3600)
    auto_advance: bool = False
    bake_seconds: int = Field(default=0, ge=0, le=30 * 86_400)
    max_failures: int = Field(default=0, ge=0, le=MAX_FLEET)
    # Hosts that never started their job by its deadline; 0, like maxFailures: docs/protocol.md.
    max_unreachable: int = Field(default=0, ge=0, le=MAX_FLEET)
    job_timeout_seconds: int = Field(default=3600, ge=1, le=7 * 86_400)

    @model_validator(mode="after")
    def _one_way_to_cut(self) -> Self:
        if self.batch_plan is not None and self.batch_size is not None:
            raise ValueError("batchSize and batchPlan: give one of them")
        self.plan()  # a malformed plan is refused here, with its reason
        return self

    def plan(self) -> BatchPlan | None:
        """The plan, as the rollout's spec and domain.plans take it."""
        try:
            if isinstance(self.batch_plan, list):
                return BatchPlan(kind="steps", steps=self.batch_plan, canary=self.canary)
            if isinstance(self.batch_plan, ExponentialPlan):
                return BatchPlan(
                    kind="exponential", exponential=self.batch_plan.exponential, canary=self.canary
                )
        except ValidationError as exc:
            raise ValueError(f"batchPlan: {exc.errors()[0]['msg']}") from None
        return BatchPlan(canary=True) if self.canary else None

    def cuts(self) -> bool:
        """Whether these say how to cut batches (a revert may leave that to its rollout's)."""
        return self.batch_size is not None or self.batch_plan is not None or self.canary

    def spec(
        self,
        *,
        id: str,
        release: Release,
        batch_size: int,
        actor: str,
        window: MaintenanceWindow | None,
    ) -> RolloutSpec:
        """The spec of a rollout to `release` run by these controls; `window`: the channel's
        default, used when these name none."""
        return RolloutSpec(
            id=id,
            manifest_id=release.id,
            version=release.version,
            channel=release.channel,
            batch_size=batch_size,
            plan=self.plan(),
            auto_advance=self.auto_advance,
            bake_seconds=self.bake_seconds,
            max_failures=self.max_failures,
            max_unreachable=self.max_unreachable,
            job_timeout_seconds=self.job_timeout_seconds,
            created_by=actor,
            window=self.window or window,
            gates=self.gates,
            gate_interval_seconds=self.gate_interval_seconds,
        )


class NewRollout(RolloutControls):
    """What an operator asks for (PROTOCOL §4). `preview_id` creates exactly what that preview
    showed."""

    manifest_id: str = Field(pattern=ID_PATTERN)
    channel: Channel
    preview_id: str | None = Field(default=None, pattern=ID_PATTERN)
    include_late_joiners: bool = False
    # Revert the hosts it updated when it is aborted or a health gate fails (docs/reverts.md);
    # for a release with migrations, how the data comes back must be said.
    auto_revert: bool = False
    auto_revert_restore: RestoreMode | None = None

    @model_validator(mode="after")
    def _late_joiners_keep_batches(self) -> Self:
        if self.batch_plan is None and self.batch_size is None:
            raise ValueError("batchSize: required, unless batchPlan is given")
        plan = self.plan()
        if self.include_late_joiners and plan is not None and plan.cuts_by_percent:
            raise ValueError(
                "includeLateJoiners: a plan with percentages would move batches already released"
                " as the targets grow; use hosts, batchSize or an exponential plan"
            )
        return self


# The actions an operator takes on one rollout (PROTOCOL §4); a freeze is the fleet's
# (services/freezes.py).
OperatorAction = Literal["advance", "pause", "resume", "retry", "abort"]

# Which jobs a rollout's view lists: every batch's (the contract), the current batch's, or none.
JobsShown = Literal["all", "current", "none"]


class RolloutDetail(BaseModel):
    """A rollout as an operator sees it: the stored row and jobs, fresher where the workflow
    answered."""

    rollout: Rollout
    jobs: list[Job]  # every attempt, ordered by batch, instance, attempt
    counts: dict[str, int]  # the latest attempt of each target, per job status
    stale: bool  # the workflow did not answer: this is the last stored view
    failures: list[JobFailure]  # the current batch's, from the acknowledged reports


async def create(
    pool: asyncpg.Pool,
    temporal: Client,
    new: NewRollout,
    *,
    actor: str,
    task_queue: str,
    stale_after_seconds: int,
) -> RolloutDetail:
    """Store the rollout (one unfinished per channel), then start its workflow; if Temporal
    cannot start it, undo the insert and raise RolloutUnavailable: nothing was created.

    With a plan or a preview, the targets are counted here too, as the workflow will select
    them when it starts: a plan they cannot be cut by is refused now, and with a `preview_id`
    they must be the previewed. A plain `batch_size` is the contract's create, unchanged."""
    plan = new.plan()
    release = await previews.release_for(pool, new.manifest_id, new.channel)
    if new.auto_revert and release.migrations_required and new.auto_revert_restore is None:
        raise Invalid(
            f"autoRevertRestore: release {release.version} runs migrations (migrations_required):"
            " say how its data comes back should it be reverted automatically: 'agent',"
            " 'manual' or 'not_needed' (docs/reverts.md)"
        )
    batch_size = new.batch_size
    if plan is not None or new.preview_id is not None:
        found = await previews.targets(
            pool,
            manifest_id=new.manifest_id,
            channel=new.channel,
            batch_size=new.batch_size,
            plan=plan,
            stale_after_seconds=stale_after_seconds,
        )
        if new.preview_id is not None:
            await previews.check_unchanged(
                pool,
                new.preview_id,
                manifest_id=new.manifest_id,
                channel=new.channel,
                now=found.instance_ids,
            )
        # With a plan, the largest batch it makes of the targets counted now.
        batch_size = batch_size or max(found.sizes, default=1)
    assert batch_size is not None  # NewRollout: batch_size or batch_plan
    spec = new.spec(
        id=uuid.uuid4().hex,
        release=release,
        batch_size=batch_size,
        actor=actor,
        window=await channel_windows.get(pool, new.channel),
    ).model_copy(
        update={
            "include_late_joiners": new.include_late_joiners,
            "auto_revert": new.auto_revert,
            "auto_revert_restore": new.auto_revert_restore,
        }
    )
    async with pool.acquire() as conn, conn.transaction():
        await freezes.refuse_if_frozen(conn, spec.channel)
        await insert(conn, spec, actor=actor, preview_id=new.preview_id)
    return await start(pool, temporal, spec, task_queue=task_queue)


async def insert(
    conn: asyncpg.Connection, spec: RolloutSpec, *, actor: str, preview_id: str | None
) -> None:
    """Store a new rollout and audit it, or Conflict while the channel has an unfinished one."""
    try:
        await rollouts.insert(conn, spec, preview_id=preview_id)
    except ChannelBusy as exc:
        raise busy(exc) from None
    await audit.record(
        conn,
        actor=actor,
        action="rollout.created",
        subject=f"rollout:{spec.id}",
        detail=rollouts.created_detail(spec) | {"previewId": preview_id},
    )


def busy(exc: ChannelBusy) -> Conflict:
    return Conflict(
        f"channel {exc.channel} already has an unfinished rollout ({exc.rollout_id});"
        " wait for it to complete or abort it"
    )


async def start(
    pool: asyncpg.Pool, temporal: Client, spec: RolloutSpec, *, task_queue: str
) -> RolloutDetail:
    """Start the workflow of a rollout just stored; if Temporal cannot start it, undo the insert
    and raise RolloutUnavailable: nothing was created."""
    try:
        await rollout_client.start_rollout(
            temporal, spec, task_queue=task_queue, timeout=START_TIMEOUT
        )
    except (RolloutUnavailable, RolloutGone) as exc:
        if not await rollout_client.workflow_exists(temporal, spec.id, timeout=LIVE_VIEW_TIMEOUT):
            await rollouts.delete_unstarted(pool, spec.id)
            raise RolloutUnavailable(
                f"the rollout engine (Temporal) is unavailable, nothing was created: {exc}"
            ) from None
        # Started, but no worker answered yet: it releases batch 1 when one runs.
    return await view(pool, temporal, spec.id)


async def view(
    pool: asyncpg.Pool, temporal: Client, rollout_id: str, *, shown: JobsShown = "all"
) -> RolloutDetail:
    """`shown`: which jobs the view lists. Counts and failures are the same whatever it lists;
    `current` and `none` read only the current batch's rows, so their cost does not grow with
    the rollout's age."""
    row = await _stored(pool, rollout_id)
    live = None
    if not row.workflow_closed:
        with contextlib.suppress(RolloutUnavailable, RolloutGone):  # then the stored view
            live = await rollout_client.live_view(temporal, row.id, timeout=LIVE_VIEW_TIMEOUT)
    if live is not None:
        row = row.model_copy(update=live.model_dump(include=set(RolloutSnapshot.model_fields)))
    current = {j.id: j for j in live.jobs} if live else {}
    if shown == "all":
        stored = await jobs.for_rollout(pool, row.id)
        counts: Counter[str] = Counter()
    else:
        stored = await jobs.for_batch(pool, row.id, row.current_batch)
        counts = Counter(await jobs.latest_counts_before(pool, row.id, row.current_batch))
    listed = [_fresher(job, current.get(job.id)) for job in stored]
    counts.update(_latest_counts(listed))
    current_batch = [job for job in listed if job.batch == row.current_batch]
    stale = live is None and not row.workflow_closed
    if stale:  # the row's details were written before reports moved its jobs on
        row = row.model_copy(update={"details": rollout_text.with_counts(row.details, counts)})
    return RolloutDetail(
        rollout=row,
        jobs=[] if shown == "none" else listed,
        counts=dict(counts),
        stale=stale,
        failures=await _failures(pool, current_batch),
    )


async def act(
    pool: asyncpg.Pool,
    temporal: Client,
    rollout_id: str,
    action: Action,
    *,
    actor: str,
    reason: str | None = None,
    force: bool = False,
    by_revert: bool = False,
) -> RolloutDetail:
    """Run an admin action through the workflow; Conflict when it does not apply now. The
    workflow answers once the read model shows the action, so polls through every API process
    see it from then on. `by_revert`: the abort a revert makes first (no autoRevert after it)."""
    row = await _stored(pool, rollout_id)
    if row.workflow_closed:
        raise Conflict(f"rollout is {row.status}; {action} does not apply to a finished rollout")
    try:
        await rollout_client.run_action(
            temporal,
            rollout_id,
            action,
            rollout_client.action_input(action, actor, reason, force=force, by_revert=by_revert),
            timeout=ACTION_TIMEOUT,
        )
    except rollout_client.ActionRefused as exc:
        raise Conflict(str(exc)) from None
    except (RolloutUnavailable, RolloutGone) as exc:
        raise RolloutUnavailable(
            f"the rollout engine did not answer in time; {action} may not have been applied"
            f" (check GET /api/rollouts/{rollout_id}): {exc}"
        ) from None
    return await view(pool, temporal, rollout_id)


async def _stored(pool: asyncpg.Pool, rollout_id: str) -> Rollout:
    row = await rollouts.get(pool, rollout_id)
    if row is None:
        raise NotFound(f"rollout {rollout_id} not found")
    return row


async def _failures(pool: asyncpg.Pool, batch: list[Job]) -> list[JobFailure]:
    """From the same acknowledged reports as each job's timeline (services/timeline.py)."""
    facts = (JobFacts(j.id, j.instance_id, j.attempt, j.status) for j in batch)
    failing = failing_jobs(facts)
    reports = await job_reports.for_jobs(pool, [j.id for j in failing])
    return [job_failure(j, reports.get(j.id, [])) for j in failing]


def _fresher(job: Job, live: JobState | None) -> Job:
    """The stored job, with the workflow's fresher status when it is in the current batch.

    The step stays the stored one: it comes from every acknowledged report, while the workflow
    hears only of a job starting and ending."""
    if live is None:
        return job
    return job.model_copy(
        update={"status": live.status, "deadline": live.deadline, "step": job.step or live.step}
    )


def _latest_counts(all_jobs: list[Job]) -> dict[str, int]:
    latest: dict[str, Job] = {}
    for job in all_jobs:
        if job.instance_id not in latest or job.attempt > latest[job.instance_id].attempt:
            latest[job.instance_id] = job
    return dict(Counter(job.status for job in latest.values()))
