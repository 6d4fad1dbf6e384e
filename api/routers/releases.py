"""Release manifests (PROTOCOL §2): upload, list, show."""

from fastapi import APIRouter, HTTPException, Query, Response, status

from api.deps import AdminActor, IdPath, PoolDep, SettingsDep
from api.responses import admin_errors, conflict, not_found
from contract.manifest import Channel, NewRelease
from store import audit, releases
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
) -> Release:
    if not manifest.has_valid_signature(
        settings.control_plane_release_signing_secret.get_secret_value()
    ):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "signature: does not match the manifest's fields (was a field changed after signing,"
            " or was it signed with another RELEASE_SIGNING_SECRET?)",
        )
    async with pool.acquire() as conn, conn.transaction():
        outcome = await releases.insert_or_get(conn, manifest)
        stored = outcome.release
        if not outcome.created and stored.manifest().as_document() != manifest.as_document():
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"release {manifest.version} on channel {manifest.channel} is already stored"
                f" (id {stored.id}) with other content",
            )
        await audit.record(
            conn,
            actor=actor,
            action="release.created" if outcome.created else "release.reuploaded",
            subject=f"release:{stored.id}",
            detail={"version": manifest.version, "channel": manifest.channel, "sha": manifest.sha},
        )
    if not outcome.created:
        response.status_code = status.HTTP_200_OK
    return stored


@router.get("", response_model=list[Release])
async def list_releases(
    _: AdminActor, pool: PoolDep, channel: Channel | None = Query(default=None)
) -> list[Release]:
    return await releases.list_all(pool, channel=channel)


@router.get("/{release_id}", response_model=Release, responses=not_found())
async def get_release(release_id: IdPath, _: AdminActor, pool: PoolDep) -> Release:
    release = await releases.get(pool, release_id)
    if release is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"release {release_id} not found")
    return release
