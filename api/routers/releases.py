"""Release manifests (PROTOCOL §2): upload, list, show, over HTTP.

The upload is services.releases'; its refusals become 409/422 (and an unknown id a 404) in
api.errors.
"""

from fastapi import APIRouter, Query, Response, status

from api.deps import AdminActor, IdPath, PoolDep, SettingsDep
from api.openapi import admin_errors, conflict, not_found
from contract.manifest import Channel, NewRelease
from services import releases as release_service
from store import releases
from store.releases import Release

router = APIRouter(prefix="/api/releases", tags=["releases"], responses=admin_errors())


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=Release,
    responses={
        200: {"model": Release, "description": "The identical manifest was stored before"},
        **conflict(),
    },
)
async def upload_release(
    manifest: NewRelease,
    response: Response,
    actor: AdminActor,
    pool: PoolDep,
    settings: SettingsDep,
    allow_older: bool = Query(
        default=False,
        alias="allowOlder",
        description="store a version below the channel's highest (audited)",
    ),
) -> Release:
    uploaded = await release_service.upload(
        pool,
        manifest,
        actor=actor,
        signing_secret=settings.control_plane_release_signing_secret.get_secret_value(),
        release_keys=settings.release_key_values,
        allow_older=allow_older,
    )
    if not uploaded.created:
        response.status_code = status.HTTP_200_OK
    return uploaded.release


@router.get("", response_model=list[Release])
async def list_releases(
    _: AdminActor, pool: PoolDep, channel: Channel | None = Query(default=None)
) -> list[Release]:
    return await releases.list_all(pool, channel=channel)


@router.get("/{release_id}", response_model=Release, responses=not_found())
async def get_release(release_id: IdPath, _: AdminActor, pool: PoolDep) -> Release:
    return await release_service.get(pool, release_id)
