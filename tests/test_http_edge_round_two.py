"""The smaller edges of issue 24, on a real API and PostgreSQL: a 405 names every method of its
path, a rollout of a missing release is 404, releases of equal precedence and releases dated far
ahead are refused, and a token sent in a query string never reaches the access log."""

from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from server.settings import ApiSettings
from tests.conftest import LiveServer
from tests.manifests import hand_signed
from tests.test_access_log import _access_lines


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("OPTIONS", "/api/rollouts", "GET, POST"),
        ("DELETE", "/api/rollouts", "GET, POST"),
        ("OPTIONS", "/api/releases", "GET, POST"),
        ("PUT", "/api/releases/abc", "GET"),
        ("OPTIONS", "/api/instances/web-1", "DELETE, GET"),
        ("GET", "/api/updates/next", "POST"),
        ("OPTIONS", "/api/rollouts/abc/pause", "POST"),
    ],
)
async def test_a_405_names_every_method_its_path_serves(
    admin_client: httpx.AsyncClient, method: str, path: str, allowed: str
) -> None:
    answer = await admin_client.request(method, path)
    assert answer.status_code == 405, answer.text
    assert answer.headers["allow"] == allowed
    assert answer.json()["detail"] == f"method {method} not allowed here; allowed: {allowed}"


async def test_a_rollout_of_a_missing_release_is_404_and_creates_nothing(
    admin_client: httpx.AsyncClient,
) -> None:
    answer = await admin_client.post(
        "/api/rollouts", json={"manifestId": "no-such-release", "channel": "stable", "batchSize": 1}
    )
    assert answer.status_code == 404, answer.text
    assert answer.json()["detail"] == "manifestId: no release with id no-such-release"
    assert (await admin_client.get("/api/rollouts")).json() == []


async def upload(
    client: httpx.AsyncClient, settings: ApiSettings, *, older: bool = False, **fields: object
) -> httpx.Response:
    secret = settings.control_plane_release_signing_secret.get_secret_value()
    params = {"allowOlder": "true"} if older else None
    return await client.post("/api/releases", json=hand_signed(secret, **fields), params=params)


async def test_releases_of_equal_precedence_are_one_release(
    admin_client: httpx.AsyncClient, settings: ApiSettings
) -> None:
    first = await upload(admin_client, settings, version="1.2.3+abc")
    assert first.status_code == 201, first.text
    for twin in ("1.2.3+def", "1.2.3"):
        refused = await upload(admin_client, settings, version=twin)
        assert refused.status_code == 409, refused.text
        detail = refused.json()["detail"]
        assert f"release {twin}: channel stable already has 1.2.3+abc" in detail
        assert "same precedence" in detail
    assert (await upload(admin_client, settings, version="1.2.3+abc")).status_code == 200
    rc = await upload(admin_client, settings, version="1.2.3-rc.1+abc", older=True)
    assert rc.status_code == 201, rc.text
    assert (await upload(admin_client, settings, version="1.2.3+def", channel="beta")).is_success
    versions = sorted(r["version"] for r in (await admin_client.get("/api/releases")).json())
    assert versions == ["1.2.3+abc", "1.2.3+def", "1.2.3-rc.1+abc"]


async def test_a_release_dated_far_ahead_is_refused(
    admin_client: httpx.AsyncClient, settings: ApiSettings
) -> None:
    def ahead(delta: timedelta) -> str:
        return (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")

    refused = await upload(admin_client, settings, released_at=ahead(timedelta(days=3650)))
    assert refused.status_code == 422, refused.text
    detail = refused.json()["detail"]
    assert detail.startswith("released_at: ") and "at most 24 hours ahead" in detail
    assert (await admin_client.get("/api/releases")).json() == []
    # A clock a little fast is not refused; a past date never is.
    soon = await upload(admin_client, settings, released_at=ahead(timedelta(hours=1)))
    assert soon.status_code == 201, soon.text
    old = await upload(
        admin_client, settings, version="0.9.0", released_at="2001-01-01T00:00:00Z", older=True
    )
    assert old.status_code == 201, old.text


async def test_a_release_below_the_channels_highest_needs_an_explicit_mark(
    admin_client: httpx.AsyncClient, settings: ApiSettings, db: asyncpg.Connection
) -> None:
    assert (await upload(admin_client, settings, version="1.4.0")).status_code == 201
    refused = await upload(admin_client, settings, version="1.3.9")
    assert refused.status_code == 409
    assert refused.json()["detail"] == (
        "release 1.3.9 is below 1.4.0, the highest on channel stable; upload it with"
        " ?allowOlder=true (audited) if you mean it"
    )
    assert (await upload(admin_client, settings, version="1.3.9", channel="beta")).is_success
    marked = await upload(admin_client, settings, version="1.3.9", older=True)
    assert marked.status_code == 201, marked.text
    detail = await db.fetchval(
        "SELECT detail FROM audit_log WHERE action = 'release.created' AND subject = $1",
        f"release:{marked.json()['id']}",
    )
    assert detail["allowOlder"] is True and detail["highest"] == "1.4.0"
    assert (await upload(admin_client, settings, version="1.3.9")).status_code == 200  # again


async def test_a_token_in_a_query_string_never_reaches_the_access_log(
    api: LiveServer, settings: ApiSettings
) -> None:
    token = settings.control_plane_admin_token.get_secret_value()
    with _access_lines() as lines:
        async with httpx.AsyncClient(base_url=api.url) as client:
            for query in (
                f"x-cp-admin-token={token}",
                f"channel=stable&token={token[:8]}",
                f"q={token}",
                token,
            ):
                refused = await client.get(f"/api/releases?{query}")
                assert refused.status_code == 401  # the query string is no way to send it
    assert len(lines) == 4, lines
    assert not [line for line in lines if token[:8] in line]
    assert "?x-cp-admin-token=[redacted]" in lines[0]
    assert "?channel=stable&token=[redacted]" in lines[1]
    assert "?q=[redacted]" in lines[2]
    assert "?[redacted]" in lines[3]
