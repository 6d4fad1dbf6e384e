"""Releases: the upload of a signed manifest (check, store once, audit) and finding one, in
domain terms. api/routers/releases.py maps them to HTTP.

The signature is checked here and only here: a stored release is trusted from then on.
"""

from datetime import UTC, datetime, timedelta

import asyncpg
from pydantic import BaseModel

from contract.manifest import NewRelease, parse_timestamp
from services.errors import Conflict, Invalid, NotFound
from store import audit, releases
from store.releases import Release

BAD_SIGNATURE = (
    "signature: does not match the manifest's fields (was a field changed after signing,"
    " or was it signed with another RELEASE_SIGNING_SECRET?)"
)


# A manifest is made when its release is (`released_at` defaults to now); one dated further
# ahead than this is a mistake or an attempt to sort first, not a clock a little fast.
MAX_RELEASED_AT_AHEAD_HOURS = 24
MAX_RELEASED_AT_AHEAD = timedelta(hours=MAX_RELEASED_AT_AHEAD_HOURS)


class Uploaded(BaseModel):
    release: Release
    created: bool  # false: the identical manifest was stored before


async def upload(
    pool: asyncpg.Pool,
    manifest: NewRelease,
    *,
    actor: str,
    signing_secret: str,
    release_keys: dict[str, str] | None = None,
    allow_older: bool = False,
) -> Uploaded:
    """Store the manifest once per (version, channel) and audit the upload. Raises Invalid
    when the signature does not match or `released_at` is too far ahead, Conflict when that
    version and channel are stored with other content, or another version of the same
    precedence is (`1.2.3+abc` and `1.2.3+def`). Uploading the identical manifest again answers
    the stored release."""
    if not manifest.has_valid_signature(signing_secret):
        raise Invalid(BAD_SIGNATURE)
    for key in manifest.key_signatures or ():
        # A key the control plane knows must verify; one it does not is the hosts' to judge.
        known = (release_keys or {}).get(key.keyid)
        if known is not None and manifest.trusted_signatures({key.keyid: known}) == 0:
            raise Invalid(
                f"key_signatures: the signature of release key {key.keyid} does not verify"
                " (the manifest changed after it was signed, or the key is not the one named)"
            )
    ahead = parse_timestamp(manifest.released_at) - datetime.now(UTC)
    if ahead > MAX_RELEASED_AT_AHEAD:
        raise Invalid(
            f"released_at: {manifest.released_at} is {ahead.total_seconds() / 86_400:.1f} days"
            f" ahead of the server's clock; at most {MAX_RELEASED_AT_AHEAD_HOURS} hours ahead"
            " is accepted"
        )
    async with pool.acquire() as conn, conn.transaction():
        twin = await releases.of_equal_precedence(conn, manifest)
        if twin is not None:
            raise Conflict(
                f"release {manifest.version}: channel {manifest.channel} already has"
                f" {twin.version} (id {twin.id}), of the same precedence (build metadata is"
                " ignored when versions are compared, so no host could tell which is newer);"
                " give this build a version of its own"
            )
        highest = await releases.highest_above(conn, manifest)
        if highest is not None and not allow_older:
            # A rollback attack replays an old, vulnerable release as if it were news; hosts
            # refuse versions not newer than theirs, and the control plane says so at upload.
            raise Conflict(
                f"release {manifest.version} is below {highest}, the highest on channel"
                f" {manifest.channel}; upload it with ?allowOlder=true (audited) if you mean it"
            )
        outcome = await releases.insert_or_get(conn, manifest)
        stored = outcome.release
        if not outcome.created and stored.manifest().as_document() != manifest.as_document():
            raise Conflict(
                f"release {manifest.version} on channel {manifest.channel} is already stored"
                f" (id {stored.id}) with other content"
            )
        await audit.record(
            conn,
            actor=actor,
            action="release.created" if outcome.created else "release.reuploaded",
            subject=f"release:{stored.id}",
            detail={"version": manifest.version, "channel": manifest.channel, "sha": manifest.sha}
            | ({"allowOlder": True, "highest": highest} if highest else {}),
        )
    return Uploaded(release=stored, created=outcome.created)


async def get(pool: asyncpg.Pool, release_id: str) -> Release:
    release = await releases.get(pool, release_id)
    if release is None:
        raise NotFound(f"release {release_id} not found")
    return release
