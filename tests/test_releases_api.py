"""POST/GET /api/releases over real HTTP against a real PostgreSQL (PROTOCOL §2–3)."""

import asyncio

import asyncpg
import httpx
import pytest

from server.settings import ApiSettings
from store import audit
from tests.conftest import LiveServer
from tests.manifests import hand_signed


def signed(settings: ApiSettings, **overrides: object) -> dict[str, object]:
    return hand_signed(
        settings.control_plane_release_signing_secret.get_secret_value(), **overrides
    )


async def release_count(db: asyncpg.Connection) -> int:
    return await db.fetchval("SELECT count(*) FROM releases")


async def test_upload_stores_and_serves_the_manifest(
    admin_client: httpx.AsyncClient, settings: ApiSettings, db: asyncpg.Connection
) -> None:
    manifest = signed(settings, breaking_changes="drops the v1 API")
    created = await admin_client.post("/api/releases", json=manifest)
    assert created.status_code == 201, created.text
    body = created.json()
    assert {k: body[k] for k in manifest} == manifest
    assert body["id"] and body["created_at"]

    fetched = await admin_client.get(f"/api/releases/{body['id']}")
    assert fetched.status_code == 200 and fetched.json() == body
    listed = await admin_client.get("/api/releases", params={"channel": "stable"})
    assert [r["id"] for r in listed.json()] == [body["id"]]
    assert (await admin_client.get("/api/releases", params={"channel": "beta"})).json() == []

    entries = await audit.for_subject(db, f"release:{body['id']}")
    assert [(e.actor, e.action) for e in entries] == [("admin", "release.created")]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("version", "1.4.1"),
        ("sha", "0123456789abcdef0123456789abcdef01234568"),
        ("channel", "beta"),
        ("migrations_required", False),
        ("breaking_changes", "surprise"),
        ("released_at", "2026-11-01T12:00:01Z"),
        ("signature", "0" * 64),
    ],
)
async def test_tampered_field_is_422_and_stores_nothing(
    admin_client: httpx.AsyncClient,
    settings: ApiSettings,
    db: asyncpg.Connection,
    field: str,
    value: object,
) -> None:
    manifest = signed(settings)
    manifest[field] = value
    response = await admin_client.post("/api/releases", json=manifest)
    assert response.status_code == 422
    assert "signature" in response.json()["detail"]
    assert await release_count(db) == 0


FIELDS = ["version", "sha", "channel", "migrations_required", "breaking_changes", "released_at"]


@pytest.mark.parametrize("field", [*FIELDS, "signature"])
async def test_missing_field_is_422_naming_it(
    admin_client: httpx.AsyncClient, settings: ApiSettings, db: asyncpg.Connection, field: str
) -> None:
    manifest = signed(settings)
    del manifest[field]
    response = await admin_client.post("/api/releases", json=manifest)
    assert response.status_code == 422
    assert field in response.json()["detail"]
    assert await release_count(db) == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("extra_field", "x"),
        ("migrations_required", "true"),
        ("migrations_required", 1),
        ("version", 14),
        ("version", "1.4"),
        ("version", "v1.4.0"),
        ("sha", "0123456789abcdef0123456789abcdef0123456z"),
        ("sha", "ABCDEF1"),
        ("sha", "abc12"),
        ("channel", "nightly"),
        ("released_at", "2026-11-01T12:00:00"),
        ("released_at", "yesterday"),
        ("breaking_changes", 5),
    ],
)
async def test_malformed_field_is_422_naming_it(
    admin_client: httpx.AsyncClient,
    settings: ApiSettings,
    db: asyncpg.Connection,
    field: str,
    value: object,
) -> None:
    # Signed over the bad value, so only the validation can refuse it.
    manifest = signed(settings, **{field: value})
    response = await admin_client.post("/api/releases", json=manifest)
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"]
    assert await release_count(db) == 0


async def test_non_object_body_is_422(admin_client: httpx.AsyncClient) -> None:
    response = await admin_client.post(
        "/api/releases", content=b"[1,2]", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["detail"]


@pytest.mark.parametrize("token", [None, "wrong-token-value-0123456789"])
async def test_admin_token_required(
    api: LiveServer, settings: ApiSettings, db: asyncpg.Connection, token: str | None
) -> None:
    headers = {"x-cp-admin-token": token} if token else {}
    async with httpx.AsyncClient(base_url=api.url, headers=headers) as client:
        upload = await client.post("/api/releases", json=signed(settings))
        listing = await client.get("/api/releases")
    assert upload.status_code == 401 and listing.status_code == 401
    assert "token" in upload.json()["detail"]
    assert await release_count(db) == 0


async def test_reupload_is_200_with_same_id_and_conflict_is_409(
    admin_client: httpx.AsyncClient, settings: ApiSettings, db: asyncpg.Connection
) -> None:
    manifest = signed(settings)
    first = await admin_client.post("/api/releases", json=manifest)
    again = await admin_client.post("/api/releases", json=manifest)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()

    other = signed(settings, sha="fedcba9")
    conflict = await admin_client.post("/api/releases", json=other)
    assert conflict.status_code == 409
    assert "1.4.0" in conflict.json()["detail"]
    assert await release_count(db) == 1
    stored = await admin_client.get(f"/api/releases/{first.json()['id']}")
    assert stored.json()["sha"] == manifest["sha"]


async def test_same_version_on_another_channel_is_another_release(
    admin_client: httpx.AsyncClient, settings: ApiSettings
) -> None:
    stable = await admin_client.post("/api/releases", json=signed(settings, channel="stable"))
    beta = await admin_client.post("/api/releases", json=signed(settings, channel="beta"))
    assert (stable.status_code, beta.status_code) == (201, 201)
    assert stable.json()["id"] != beta.json()["id"]


async def test_concurrent_identical_uploads_store_exactly_one_row(
    admin_client: httpx.AsyncClient, settings: ApiSettings, db: asyncpg.Connection
) -> None:
    manifest = signed(settings)
    responses = await asyncio.gather(
        *(admin_client.post("/api/releases", json=manifest) for _ in range(20))
    )
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 19 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert await release_count(db) == 1


async def test_unknown_release_is_404(admin_client: httpx.AsyncClient) -> None:
    response = await admin_client.get("/api/releases/nope")
    assert response.status_code == 404 and "nope" in response.json()["detail"]
