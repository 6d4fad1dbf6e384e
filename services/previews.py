"""A rollout's preview: what creating it now would do, starting nothing (docs/planning.md).

The hosts of every batch in order (the same selection and cut as the rollout's own start:
store.instances.TARGET_FILTER and domain.plans), the channel's hosts left out and why, a
predicted duration from the jobs this channel's hosts ran before, and warnings. The preview's
targets are stored for a day: a rollout created with its `previewId` takes exactly them, or is
refused naming what changed since.
"""

import uuid

import asyncpg
from pydantic import BaseModel

from domain.plans import BatchPlan, batch_sizes, batch_starts, plan_problem
from services.errors import Conflict, Invalid, NotFound
from store import instances, job_reports, previews, releases, rollout_targets
from store.releases import Release
from store.rollouts import LeftOut

# Ids shown per batch when no batch's hosts are asked for.
FIRST_HOSTS = 10
# A job's duration assumed where this channel has no finished job to learn from.
ASSUMED_JOB_SECONDS = 120.0
# What a changed preview names of the hosts that joined or left.
CHANGES_SHOWN = 5


class PlannedBatch(BaseModel):
    number: int
    size: int
    first_hosts: list[str]


class Prediction(BaseModel):
    seconds: float  # from the first batch's release to the last one's end
    job_seconds: float  # the duration taken for a batch: its slowest job's, as observed
    assumptions: list[str]


class Preview(BaseModel):
    preview_id: str
    version: str
    channel: str
    target_count: int
    batches: list[PlannedBatch]
    left_out: list[LeftOut]
    already_current: int  # hosts of the channel at or above the version
    prediction: Prediction
    warnings: list[str]
    # With `batch`: that batch's hosts from `offset`, `limit` at most.
    hosts: list[str] | None = None


class Targets(BaseModel):
    """The hosts a rollout created now would update, in batch order, and the batches' sizes."""

    release: Release
    versions: list[str]  # those below the release's on the channel
    instance_ids: list[str]
    sizes: list[int]


async def release_for(pool: asyncpg.Pool, manifest_id: str, channel: str) -> Release:
    """The release a rollout on `channel` would update to; raises NotFound or Invalid."""
    release = await releases.get(pool, manifest_id)
    if release is None:
        # The body is well formed; what it names does not exist: 404, as GET /api/releases/{id}.
        raise NotFound(f"manifestId: no release with id {manifest_id}")
    if release.channel != channel:
        raise Invalid(
            f"channel: release {release.version} is for channel {release.channel}, not {channel}"
        )
    return release


async def targets(
    pool: asyncpg.Pool,
    *,
    manifest_id: str,
    channel: str,
    batch_size: int | None,
    plan: BatchPlan | None,
    stale_after_seconds: int,
) -> Targets:
    """Raises NotFound (no such release), Invalid (another channel's release, or a plan these
    targets cannot be cut by)."""
    release = await release_for(pool, manifest_id, channel)
    versions = await instances.versions_below(pool, channel=channel, version=release.version)
    ids = await instances.targets(
        pool, channel=channel, versions=versions, stale_after_seconds=stale_after_seconds
    )
    sizes = batch_sizes(batch_size or 1, plan, len(ids))
    problem = plan_problem(plan, sizes)
    if problem is not None:
        raise Invalid(problem)
    return Targets(release=release, versions=versions, instance_ids=ids, sizes=sizes)


async def preview(
    pool: asyncpg.Pool,
    *,
    manifest_id: str,
    channel: str,
    batch_size: int | None,
    plan: BatchPlan | None,
    auto_advance: bool,
    bake_seconds: int,
    stale_after_seconds: int,
    batch: int | None = None,
    offset: int = 0,
    limit: int = 1000,
) -> Preview:
    found = await targets(
        pool,
        manifest_id=manifest_id,
        channel=channel,
        batch_size=batch_size,
        plan=plan,
        stale_after_seconds=stale_after_seconds,
    )
    ids, sizes, release = found.instance_ids, found.sizes, found.release
    if batch is not None and not 1 <= batch <= len(sizes):
        raise Invalid(f"batch: the plan makes {len(sizes)} batches, not {batch}")
    preview_id = uuid.uuid4().hex
    await previews.insert(
        pool, preview_id, release_id=release.id, channel=channel, instance_ids=ids
    )
    starts = batch_starts(sizes)
    excluded = await instances.excluded_from_targets(
        pool, channel=channel, versions=found.versions, stale_after_seconds=stale_after_seconds
    )
    on_channel = await instances.count_on_channel(pool, channel)
    hosts = None
    if batch is not None:
        start = starts[batch - 1] + offset
        hosts = ids[start : min(start + limit, starts[batch - 1] + sizes[batch - 1])]
    return Preview(
        preview_id=preview_id,
        version=release.version,
        channel=channel,
        target_count=len(ids),
        batches=[
            PlannedBatch(number=n, size=size, first_hosts=ids[at : at + min(size, FIRST_HOSTS)])
            for n, (at, size) in enumerate(zip(starts, sizes, strict=True), start=1)
        ],
        left_out=rollout_targets.left_out(excluded, stale_after_seconds),
        already_current=on_channel - len(ids) - sum(e.total for e in excluded),
        prediction=await _prediction(pool, channel, sizes, auto_advance, bake_seconds),
        warnings=_warnings(release, sizes),
        hosts=hosts,
    )


async def check_unchanged(
    pool: asyncpg.Pool, preview_id: str, *, manifest_id: str, channel: str, now: list[str]
) -> None:
    """Raises NotFound (unknown or past its day), Invalid (another release or channel) or
    Conflict naming the hosts that joined or left since the preview."""
    shown = await previews.get(pool, preview_id)
    if shown is None:
        raise NotFound(
            f"previewId: no preview {preview_id} (previews are kept {previews.KEPT_SECONDS} s)"
        )
    if (shown.release_id, shown.channel) != (manifest_id, channel):
        raise Invalid(
            f"previewId: preview {preview_id} is of release {shown.release_id} on"
            f" {shown.channel}, not {manifest_id} on {channel}"
        )
    if shown.instance_ids == now:
        return
    before, after = set(shown.instance_ids), set(now)
    changes = [
        f"{len(after - before)} joined ({', '.join(sorted(after - before)[:CHANGES_SHOWN])})"
        if after - before
        else "",
        f"{len(before - after)} left ({', '.join(sorted(before - after)[:CHANGES_SHOWN])})"
        if before - after
        else "",
    ]
    raise Conflict(
        f"the targets changed since preview {preview_id}: "
        + "; ".join(c for c in changes if c)
        + " (a host put on hold, decommissioned, updated or new); preview again"
    )


async def _prediction(
    pool: asyncpg.Pool, channel: str, sizes: list[int], auto_advance: bool, bake_seconds: int
) -> Prediction:
    observed = await job_reports.durations(pool, channel)
    assumptions = []
    if observed.jobs:
        job_seconds = observed.p90_seconds
        assumptions.append(
            f"a batch takes as long as its slowest job: {job_seconds:.0f} s, the 90th percentile"
            f" of the last {observed.jobs} jobs that succeeded on {channel}"
        )
    else:
        job_seconds = ASSUMED_JOB_SECONDS
        assumptions.append(
            f"no job has succeeded on {channel} yet: {ASSUMED_JOB_SECONDS:.0f} s a batch assumed"
        )
    assumptions.append("hosts hold their polls (long-poll): a released job starts at once")
    between = max(0, len(sizes) - 1)
    seconds = job_seconds * len(sizes)
    if auto_advance:
        seconds += bake_seconds * between
        if bake_seconds:
            assumptions.append(f"{bake_seconds} s of bake after each of {between} batches")
    elif between:
        assumptions.append(f"not counted: the time an operator takes to advance {between} times")
    return Prediction(seconds=seconds, job_seconds=job_seconds, assumptions=assumptions)


def _warnings(release: Release, sizes: list[int]) -> list[str]:
    warnings = []
    if release.migrations_required and sizes and sizes[0] > 1:
        warnings.append(
            f"release {release.version} requires migrations and batch 1 has {sizes[0]} hosts:"
            " `canary: true` runs it on one host first"
        )
    if not sizes:
        warnings.append("no host to update: the rollout would complete at once")
    return warnings
