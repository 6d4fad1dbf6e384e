"""Fleet revert: a rollout that takes the hosts another rollout updated back to the release each
ran before (docs/reverts.md).

Who goes back is decided by domain.reverts from what each host runs now; the revert is then an
ordinary rollout (batches, windows, gates, pause, abort) whose jobs each carry their own release
(store.reverts) and a downgrade permission signed when handed out (contract.downgrade). The
reverted rollout, if unfinished, is aborted first with the revert named as the reason, so the
channel's one-unfinished-rollout rule does not stand in the way and the two read as one story:
`revertedBy` on one, `revertOf` on the other, both in the audit.
"""

import contextlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

import asyncpg
from pydantic import BaseModel, Field
from temporalio.client import Client

from contract.downgrade import RestoreMode
from domain.plans import BatchPlan, batch_sizes, plan_problem
from domain.reverts import RevertPlan, plan_revert
from services import freezes
from services import rollouts as rollout_service
from services.errors import Conflict, Invalid, NotFound
from services.rollouts import RolloutControls, RolloutDetail
from store import audit, channel_windows, releases, reverts, rollouts
from store.releases import Release
from store.reverts import TargetRelease
from store.rollouts import ChannelBusy, LeftOut, RevertTerms, Rollout

Reason = Annotated[str, Field(min_length=1, max_length=1000)]


class NewRevert(RolloutControls):
    """What an operator asks of a revert: the controls of any rollout (batches cut as the
    reverted rollout's when it names none), and its terms."""

    # Required when the reverted release had migrations_required (RestoreMode).
    restore: RestoreMode | None = None
    restore_note: Annotated[str, Field(max_length=1000)] | None = None
    # Needed while a fleet freeze holds the channel: why the revert runs through it (audited).
    freeze_override: Reason | None = None
    reason: Annotated[str, Field(max_length=1000)] | None = None


class RevertPreview(BaseModel):
    """What reverting now would do; nothing was started."""

    revert_of: str
    version: str  # the release its hosts leave
    target_count: int
    targets: list[TargetRelease]  # the releases they go back to
    left_out: list[LeftOut]  # hosts the rollout touched that are not reverted, by reason
    batches: list[int]  # each batch's size
    warnings: list[str]


@dataclass(frozen=True)
class _Prepared:
    original: Rollout
    release: Release  # the reverted release
    plan: RevertPlan
    batch_plan: BatchPlan | None  # how its batches are cut
    batch_size: int
    sizes: list[int]


async def _prepare(
    pool: asyncpg.Pool, rollout_id: str, new: NewRevert, *, stale_after_seconds: int
) -> _Prepared:
    """The rollout, its release and who would go back now; refusals that change nothing."""
    original = await rollouts.get(pool, rollout_id)
    if original is None:
        raise NotFound(f"rollout {rollout_id} not found")
    release = await releases.get(pool, original.manifest_id)
    assert release is not None  # rollouts reference their release, and releases stay
    if release.migrations_required and new.restore is None:
        raise Invalid(
            f"restore: release {release.version} ran migrations (migrations_required), so a"
            " revert must say how its data comes back: 'agent' (each host runs"
            " UPDATE_RESTORE_CMD with the backup taken before it updated), 'manual' (you"
            " restore it; say how in restoreNote) or 'not_needed' (the old release reads the"
            " new data)"
        )
    hosts = await reverts.touched_hosts(pool, rollout_id)
    plan = plan_revert(
        hosts,
        channel=original.channel,
        now=datetime.now(UTC),
        stale_after_seconds=stale_after_seconds,
    )
    if new.cuts():
        batch_plan, batch_size = new.plan(), new.batch_size
    else:  # batches cut as the reverted rollout's were
        batch_plan, batch_size = original.plan, original.batch_size
    sizes = batch_sizes(batch_size or 1, batch_plan, len(plan.targets))
    problem = plan_problem(batch_plan, sizes)
    if problem is not None:
        raise Invalid(problem)
    return _Prepared(
        original=original,
        release=release,
        plan=plan,
        batch_plan=batch_plan,
        batch_size=batch_size or max(sizes, default=1),
        sizes=sizes,
    )


def _nothing_to_revert(prepared: _Prepared) -> Conflict:
    plan = prepared.plan
    why = [f"{len(ids)} {reason.replace('_', ' ')}" for reason, ids in sorted(plan.skipped.items())]
    if plan.not_on_version:
        why.append(f"{plan.not_on_version} no longer on what their job installed")
    return Conflict(
        f"nothing to revert: no host of rollout {prepared.original.id} runs"
        f" {prepared.release.version} and can go back now"
        + (f" (left out: {'; '.join(why)})" if why else "")
    )


async def preview(
    pool: asyncpg.Pool, rollout_id: str, new: NewRevert, *, stale_after_seconds: int
) -> RevertPreview:
    prepared = await _prepare(pool, rollout_id, new, stale_after_seconds=stale_after_seconds)
    original, plan = prepared.original, prepared.plan
    warnings = []
    if original.status not in ("completed", "aborted"):
        warnings.append(f"rollout {original.id} is {original.status}: reverting aborts it first")
    if new.freeze_override is None:
        async with pool.acquire() as conn, conn.transaction():
            try:
                await freezes.refuse_if_frozen(conn, original.channel)
            except Conflict as exc:
                warnings.append(str(exc))
    counts: dict[str, int] = {}
    for _, release_id in plan.targets:
        counts[release_id] = counts.get(release_id, 0) + 1
    targets = []
    for release_id, hosts in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        target = await releases.get(pool, release_id)
        assert target is not None
        targets.append(TargetRelease(release_id=release_id, version=target.version, hosts=hosts))
    return RevertPreview(
        revert_of=original.id,
        version=prepared.release.version,
        target_count=len(plan.targets),
        targets=targets,
        left_out=reverts.left_out(plan),
        batches=prepared.sizes,
        warnings=warnings,
    )


async def revert(
    pool: asyncpg.Pool,
    temporal: Client,
    rollout_id: str,
    new: NewRevert,
    *,
    actor: str,
    task_queue: str,
    stale_after_seconds: int,
) -> RolloutDetail:
    """Abort the rollout if it is unfinished, then start the revert of its hosts. Refused,
    changing nothing: an unknown rollout (404), a migrations release without `restore` or a
    plan the hosts cannot be cut by (422), no host to take back or a freeze without an
    override (409). Refused after the abort, which stands: the rollout's jobs ended so that no
    host is left to take back, or another rollout took the channel meanwhile (409)."""
    prepared = await _prepare(pool, rollout_id, new, stale_after_seconds=stale_after_seconds)
    if not prepared.plan.targets:
        raise _nothing_to_revert(prepared)
    original = prepared.original
    if new.freeze_override is None:  # refused before the abort, which must not happen alone
        async with pool.acquire() as conn, conn.transaction():
            await freezes.refuse_if_frozen(conn, original.channel)
    revert_id = uuid.uuid4().hex
    if original.status not in ("completed", "aborted"):
        # Without the revert's id: should the revert then be refused (nothing left to take
        # back, the channel taken meanwhile), the abort stands and names no rollout that is not.
        why = "reverting" + (f": {new.reason}" if new.reason else "")
        with contextlib.suppress(Conflict):  # it finished meanwhile: revert what it did
            await rollout_service.act(
                pool, temporal, original.id, "abort", actor=actor, reason=why, by_revert=True
            )
        # Jobs cancelled or ended by the abort: who goes back is decided on the hosts as now.
        prepared = await _prepare(pool, rollout_id, new, stale_after_seconds=stale_after_seconds)
        if not prepared.plan.targets:
            raise _nothing_to_revert(prepared)
    plan = prepared.plan
    main = plan.main_release()
    assert main is not None  # there are targets
    target = await releases.get(pool, main)
    assert target is not None
    spec = new.spec(
        id=revert_id,
        release=target,
        batch_size=prepared.batch_size,
        actor=actor,
        window=await channel_windows.get(pool, original.channel),
    ).model_copy(update={"revert_of": original.id, "plan": prepared.batch_plan})
    terms = RevertTerms(
        restore=new.restore, restore_note=new.restore_note, freeze_override=new.freeze_override
    )
    async with pool.acquire() as conn, conn.transaction():
        overridden = await freezes.refuse_if_frozen(
            conn, original.channel, override=new.freeze_override
        )
        try:
            await reverts.create(
                conn, spec, reverted=original, plan=plan, terms=terms, reason=new.reason
            )
        except ChannelBusy as exc:
            raise rollout_service.busy(exc) from None
        if overridden is not None:
            await audit.record(
                conn,
                actor=actor,
                action="fleet.freeze_overridden",
                subject=f"rollout:{revert_id}",
                detail={"reason": new.freeze_override, "freeze": overridden.reason},
            )
    return await rollout_service.start(pool, temporal, spec, task_queue=task_queue)
