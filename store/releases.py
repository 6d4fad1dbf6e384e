"""releases: signed manifests as uploaded, unique per (version, channel)."""

import uuid
from datetime import datetime

import asyncpg
import semver
from pydantic import BaseModel

from contract.manifest import ReleaseManifest

_COLUMN_NAMES = (
    "id",
    "version",
    "channel",
    "sha",
    "migrations_required",
    "breaking_changes",
    "released_at",
    "signature",
    "created_at",
    "expires_at",
    "key_signatures",
)
_COLUMNS = ", ".join(_COLUMN_NAMES)


class Release(ReleaseManifest):
    id: str
    created_at: datetime

    def manifest(self) -> ReleaseManifest:
        return ReleaseManifest(**self.model_dump(include=set(ReleaseManifest.model_fields)))


class InsertOutcome(BaseModel):
    release: Release
    created: bool


def _release(row: asyncpg.Record) -> Release:
    return from_json(dict(row))


def as_json(alias: str) -> str:
    """SQL: the release row `alias` as one jsonb value (read back by `from_json`), for a
    statement of other tables that answers with a release too, as a poll handing out a job
    does. Releases are never changed once stored, so what it read is what a lookup would."""
    pairs = ", ".join(f"'{column}', {alias}.{column}" for column in _COLUMN_NAMES)
    return f"jsonb_build_object({pairs})"


def from_json(value: dict[str, object]) -> Release:
    return Release.model_validate(value, strict=False)


async def insert_or_get(
    conn: asyncpg.Connection | asyncpg.Pool, m: ReleaseManifest
) -> InsertOutcome:
    """Insert unless (version, channel) exists; the unique key makes concurrent uploads one row."""
    row = await conn.fetchrow(
        "INSERT INTO releases (id, version, channel, sha, migrations_required, breaking_changes,"
        " released_at, signature, expires_at, key_signatures)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        f" ON CONFLICT (version, channel) DO NOTHING RETURNING {_COLUMNS}",
        uuid.uuid4().hex,
        m.version,
        m.channel,
        m.sha,
        m.migrations_required,
        m.breaking_changes,
        m.released_at,
        m.signature,
        m.expires_at,
        [k.model_dump() for k in m.key_signatures] if m.key_signatures is not None else None,
    )
    if row is not None:
        return InsertOutcome(release=_release(row), created=True)
    existing = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM releases WHERE version = $1 AND channel = $2", m.version, m.channel
    )
    assert existing is not None, "a conflicting row cannot vanish: releases are never deleted"
    return InsertOutcome(release=_release(existing), created=False)


async def of_equal_precedence(conn: asyncpg.Connection, m: ReleaseManifest) -> Release | None:
    """A release stored on the manifest's channel whose version differs from the manifest's
    only in build metadata (`1.2.3+abc`, `1.2.3`; semver ignores it when comparing), if any.
    Takes a lock, held until the caller's transaction ends, so that two such uploads at once
    are checked one after the other."""
    core = m.version.split("+", 1)[0]
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        f"release_precedence:{m.channel}:{core}",
    )
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM releases WHERE channel = $1"
        " AND split_part(version, '+', 1) = $2 AND version <> $3 ORDER BY created_at, id LIMIT 1",
        m.channel,
        core,
        m.version,
    )
    return _release(row) if row else None


async def get(conn: asyncpg.Connection | asyncpg.Pool, release_id: str) -> Release | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM releases WHERE id = $1", release_id)
    return _release(row) if row else None


async def highest_above(conn: asyncpg.Connection | asyncpg.Pool, m: ReleaseManifest) -> str | None:
    """The highest version stored on the manifest's channel, when it is above the manifest's
    (semver order; None otherwise, or when this very version is stored: a re-upload)."""
    rows = await conn.fetch("SELECT version FROM releases WHERE channel = $1", m.channel)
    versions = [r["version"] for r in rows]
    if m.version in versions:
        return None
    above = [v for v in versions if semver.Version.parse(v).compare(m.semver) > 0]
    return max(above, key=semver.Version.parse, default=None)


async def list_all(
    conn: asyncpg.Connection | asyncpg.Pool, *, channel: str | None = None
) -> list[Release]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM releases WHERE ($1::text IS NULL OR channel = $1)"
        " ORDER BY created_at DESC, id",
        channel,
    )
    return [_release(r) for r in rows]
