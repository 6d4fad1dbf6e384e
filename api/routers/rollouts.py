"""Rollouts (PROTOCOL §4): create, list, show and the admin actions, over HTTP.

The flows are services.rollouts'; their refusals become 404/409/422 and a Temporal outage a 503
in api.errors. A view the workflow did not answer for is the stored one, `"stale": true`.
"""

from fastapi import APIRouter, Query, status

from api.deps import AdminActor, IdPath, PoolDep, SettingsDep, TemporalDep
from api.openapi import admin_errors, conflict, not_found
from api.schemas import (
    ActionBody,
    CreateRollout,
    PreviewOut,
    RevertBody,
    RevertPreviewOut,
    RolloutOut,
    RolloutSummaryOut,
)
from contract.manifest import Channel
from contract.wire import RolloutStatus
from domain.plans import MAX_BATCH_SIZE, MAX_BATCHES
from services import previews as preview_service
from services import reverts as revert_service
from services import rollouts as rollout_service
from services.rollouts import JobsShown, OperatorAction
from store import rollouts

router = APIRouter(prefix="/api/rollouts", tags=["rollouts"], responses=admin_errors())


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=RolloutOut,
    responses=conflict() | not_found(),
)
async def create_rollout(
    body: CreateRollout,
    actor: AdminActor,
    pool: PoolDep,
    settings: SettingsDep,
    temporal: TemporalDep,
) -> RolloutOut:
    detail = await rollout_service.create(
        pool,
        temporal,
        body,
        actor=actor,
        task_queue=settings.temporal_task_queue,
        stale_after_seconds=settings.instance_stale_after_seconds,
    )
    return RolloutOut.from_detail(detail)


@router.post("/preview", response_model=PreviewOut, responses=not_found())
async def preview_rollout(
    body: CreateRollout,
    _: AdminActor,
    pool: PoolDep,
    settings: SettingsDep,
    batch: int | None = Query(default=None, ge=1, le=MAX_BATCHES, description="list its hosts"),
    offset: int = Query(default=0, ge=0, le=MAX_BATCH_SIZE),
    limit: int = Query(default=1000, ge=1, le=MAX_BATCH_SIZE),
) -> PreviewOut:
    """What creating this rollout now would do, starting nothing: every batch's size and first
    hosts (`?batch=N` lists that batch's, a page at a time), the channel's hosts left out and
    why, a predicted duration and warnings. Create with its `previewId` to get exactly these
    batches, or a 409 naming what changed."""
    found = await preview_service.preview(
        pool,
        manifest_id=body.manifest_id,
        channel=body.channel,
        batch_size=body.batch_size,
        plan=body.plan(),
        auto_advance=body.auto_advance,
        bake_seconds=body.bake_seconds,
        stale_after_seconds=settings.instance_stale_after_seconds,
        batch=batch,
        offset=offset,
        limit=limit,
    )
    return PreviewOut.from_preview(found)


@router.get("", response_model=list[RolloutSummaryOut])
async def list_rollouts(
    _: AdminActor,
    pool: PoolDep,
    channel: Channel | None = Query(default=None),
    status_filter: RolloutStatus | None = Query(default=None, alias="status"),
) -> list[RolloutSummaryOut]:
    rows = await rollouts.list_all(pool, channel=channel, status=status_filter)
    return [RolloutSummaryOut.from_row(row) for row in rows]


@router.get("/{rollout_id}", response_model=RolloutOut, responses=not_found())
async def get_rollout(
    rollout_id: IdPath,
    _: AdminActor,
    pool: PoolDep,
    temporal: TemporalDep,
    jobs: JobsShown = Query(
        default="all",
        description="Which jobs `batches` lists: `all` (every batch's), `current` (the current"
        " batch's only) or `none`. Counts and failures are the same whatever it lists; `current`"
        " and `none` cost the same at any rollout age, for dashboards that poll.",
    ),
) -> RolloutOut:
    detail = await rollout_service.view(pool, temporal, rollout_id, shown=jobs)
    return RolloutOut.from_detail(detail)


@router.post(
    "/{rollout_id}/revert",
    status_code=status.HTTP_201_CREATED,
    response_model=RolloutOut,
    responses=conflict() | not_found(),
)
async def revert_rollout(
    rollout_id: IdPath,
    body: RevertBody,
    actor: AdminActor,
    pool: PoolDep,
    settings: SettingsDep,
    temporal: TemporalDep,
) -> RolloutOut:
    """Take the hosts this rollout updated back to the release each ran before, as a new
    rollout (docs/reverts.md); an unfinished rollout is aborted first. Answers the revert."""
    detail = await revert_service.revert(
        pool,
        temporal,
        rollout_id,
        body,
        actor=actor,
        task_queue=settings.temporal_task_queue,
        stale_after_seconds=settings.instance_stale_after_seconds,
    )
    return RolloutOut.from_detail(detail)


@router.post("/{rollout_id}/revert/preview", response_model=RevertPreviewOut, responses=not_found())
async def preview_revert(
    rollout_id: IdPath, body: RevertBody, _: AdminActor, pool: PoolDep, settings: SettingsDep
) -> RevertPreviewOut:
    """What reverting this rollout now would do, starting nothing: the hosts going back and
    to which releases, the ones left out and why, the batches and warnings."""
    found = await revert_service.preview(
        pool, rollout_id, body, stale_after_seconds=settings.instance_stale_after_seconds
    )
    return RevertPreviewOut.from_preview(found)


@router.post(
    "/{rollout_id}/{action}", response_model=RolloutOut, responses=not_found() | conflict()
)
async def act_on_rollout(
    rollout_id: IdPath,
    action: OperatorAction,
    actor: AdminActor,
    pool: PoolDep,
    temporal: TemporalDep,
    body: ActionBody | None = None,
) -> RolloutOut:
    detail = await rollout_service.act(
        pool,
        temporal,
        rollout_id,
        action,
        actor=actor,
        reason=body.reason if body else None,
        force=body.force if body else False,
    )
    return RolloutOut.from_detail(detail)
