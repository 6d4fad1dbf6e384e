"""The HTTP edge over real HTTP: hostile requests get a 4xx JSON `detail`, never a traceback."""

import json
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from api.app import create_app
from contract.manifest import MAX_BREAKING_CHANGES_BYTES
from devstack.ports import free_port
from domain.jobs import JobWrite
from domain.rollouts import RolloutSpec
from server.settings import ApiSettings
from store import jobs, rollouts
from tests.agent_requests import (
    assert_signed_by,
    body_for,
    hmac_hex,
    now_iso,
    poll_body,
    post_signed,
)
from tests.conftest import LiveServer
from tests.fixtures_temporal import seed_release
from tests.manifests import hand_signed

LISTED_SECRET = "listed-instance-secret-0123456789"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def tracebacks() -> Iterator[list[logging.LogRecord]]:
    """Every log record carrying an exception, from uvicorn (500s) and the app alike."""
    handler = _Records()
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "api", "")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


@pytest.fixture
async def edge(settings: ApiSettings) -> AsyncIterator[httpx.AsyncClient]:
    """The API with one listed instance and no fleet-wide fallback token."""
    configured = settings.model_copy(
        update={"control_plane_agent_secrets": {"web-1": SecretStr(LISTED_SECRET)}}
    )
    async with (
        LiveServer(create_app(configured), free_port()) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as client,
    ):
        yield client


def _admin(settings: ApiSettings) -> dict[str, str]:
    return {"x-cp-admin-token": settings.control_plane_admin_token.get_secret_value()}


def _assert_json_4xx(response: httpx.Response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    for word in words:
        assert word in detail
    return detail


def _raw_poll(nonce_literal: str = '"0123456789abcdef"', instance: str = "web-1") -> bytes:
    """A poll written by hand, so it can hold what json.dumps would never produce."""
    return (
        f'{{"instanceId":"{instance}","sentAt":"{now_iso()}","nonce":{nonce_literal},'
        '"channel":"stable","currentVersion":"1.0.0"}'
    ).encode()


async def test_malformed_agent_requests_without_credentials_are_4xx_and_log_no_traceback(
    edge: httpx.AsyncClient, tracebacks: list[logging.LogRecord]
) -> None:
    path = "/api/updates/next"
    non_ascii = await edge.post(
        path, content=_raw_poll(), headers={"x-agent-signature": "é".encode() * 32}
    )
    _assert_json_4xx(non_ascii, 401, "does not match")

    surrogate = await edge.post(
        path, content=_raw_poll(r'"\ud800"'), headers={"x-agent-signature": "0" * 64}
    )
    assert "nonce" not in _assert_json_4xx(surrogate, 401) and "nonce" not in surrogate.json()

    deep = b"[" * 10_000 + b"]" * 10_000
    _assert_json_4xx(await edge.post(path, content=deep), 422, "body")
    huge_integer = b'{"instanceId": ' + b"7" * 5_000 + b"}"
    _assert_json_4xx(await edge.post(path, content=huge_integer), 422, "body")
    too_big = await edge.post(path, content=b" " * (64 * 1024 + 1))
    _assert_json_4xx(too_big, 413, "65536")

    assert [r for r in tracebacks if r.exc_info] == []


async def test_refusals_for_listed_and_unlisted_instances_look_alike(
    edge: httpx.AsyncClient,
) -> None:
    """Without a fallback token, a 401 must not tell an outsider which instance ids exist."""
    answers = []
    for instance in ("web-1", "not-listed"):
        for signature in ("f" * 64, None):
            raw = json.dumps(poll_body(instance)).encode()
            headers = {"x-agent-signature": signature} if signature else {}
            answers.append(await edge.post("/api/updates/next", content=raw, headers=headers))
    listed_bad, listed_missing, unlisted_bad, unlisted_missing = answers
    for listed, unlisted in ((listed_bad, unlisted_bad), (listed_missing, unlisted_missing)):
        assert listed.status_code == unlisted.status_code == 401
        assert listed.json()["detail"] == unlisted.json()["detail"]
        assert set(listed.headers) == set(unlisted.headers)
        assert len(unlisted.headers["x-cp-signature"]) == 64
    assert listed_bad.headers["x-cp-signature"] == hmac_hex(LISTED_SECRET, listed_bad.content)


async def test_admin_token_is_checked_before_the_body_and_every_route_has_a_body_limit(
    edge: httpx.AsyncClient, settings: ApiSettings
) -> None:
    async def endless() -> AsyncIterator[bytes]:
        for _ in range(2_000):  # 128 MiB if it were read
            yield b" " * 65_536

    unauthenticated = await edge.post("/api/releases", content=endless())
    _assert_json_4xx(unauthenticated, 401, "x-cp-admin-token")
    non_ascii = await edge.get("/api/releases", headers={"x-cp-admin-token": "é".encode() * 16})
    _assert_json_4xx(non_ascii, 401, "invalid admin token")

    declared = await edge.post(
        "/api/releases", content=b" " * (1024 * 1024 + 1), headers=_admin(settings)
    )
    _assert_json_4xx(declared, 413, "1048576")
    chunked = await edge.post("/api/releases", content=endless(), headers=_admin(settings))
    _assert_json_4xx(chunked, 413, "1048576")


async def test_malformed_admin_bodies_are_4xx(
    edge: httpx.AsyncClient, settings: ApiSettings, tracebacks: list[logging.LogRecord]
) -> None:
    admin = _admin(settings) | {"content-type": "application/json"}
    for body in (b"[" * 10_000 + b"]" * 10_000, b'{"manifestId": ' + b"7" * 5_000 + b"}"):
        answer = await edge.post("/api/rollouts", content=body, headers=admin)
        _assert_json_4xx(answer, 422, "body: not valid JSON")
    unknown_key = await edge.post("/api/rollouts", content=b'{"\\ud800": 1}', headers=admin)
    _assert_json_4xx(unknown_key, 422)
    assert [r for r in tracebacks if r.exc_info] == []


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/api/releases/%00", "release_id"),
        ("/api/rollouts/%00", "rollout_id"),
        ("/api/rollouts/a%00b/pause", "rollout_id"),
        ("/api/updates/jobs?rolloutId=%00", "rolloutId"),
        ("/api/updates/jobs?instanceId=web%001", "instanceId"),
        ("/api/updates/jobs/%00", "job_id"),
    ],
)
async def test_ids_with_nul_are_refused_naming_the_parameter(
    edge: httpx.AsyncClient, settings: ApiSettings, path: str, parameter: str
) -> None:
    method = "POST" if path.endswith("pause") else "GET"
    answer = await edge.request(method, path, headers=_admin(settings))
    _assert_json_4xx(answer, 422, parameter)


async def test_integer_fields_are_bounded(edge: httpx.AsyncClient, settings: ApiSettings) -> None:
    body = {"manifestId": "r1", "channel": "stable", "batchSize": 1, "maxFailures": 8796093022207}
    answer = await edge.post("/api/rollouts", json=body, headers=_admin(settings))
    _assert_json_4xx(answer, 422, "maxFailures", "100000")
    assert answer.json()["errors"][0]["loc"] == ["body", "maxFailures"]


async def test_breaking_changes_is_bounded_and_refused_with_nul_on_upload(
    edge: httpx.AsyncClient, settings: ApiSettings
) -> None:
    secret = settings.control_plane_release_signing_secret.get_secret_value()
    long_text = "x" * (MAX_BREAKING_CHANGES_BYTES + 1)
    too_long = hand_signed(secret, breaking_changes=long_text)
    answer = await edge.post("/api/releases", json=too_long, headers=_admin(settings))
    _assert_json_4xx(answer, 422, "breaking_changes", str(MAX_BREAKING_CHANGES_BYTES))
    with_nul = hand_signed(secret, version="1.5.0", breaking_changes="drops\u0000 /v1")
    answer = await edge.post("/api/releases", json=with_nul, headers=_admin(settings))
    _assert_json_4xx(answer, 422, "breaking_changes", "NUL")
    listed = await edge.get("/api/releases", headers=_admin(settings))
    assert listed.json() == []
    fitting = hand_signed(secret, breaking_changes="x" * MAX_BREAKING_CHANGES_BYTES)
    assert (await edge.post("/api/releases", json=fitting, headers=_admin(settings))).is_success


async def test_a_release_stored_before_the_limit_stays_readable(
    edge: httpx.AsyncClient, settings: ApiSettings, db: asyncpg.Connection
) -> None:
    secret = settings.control_plane_release_signing_secret.get_secret_value()
    old = hand_signed(secret, breaking_changes="y" * (10 * MAX_BREAKING_CHANGES_BYTES))
    await db.execute(
        "INSERT INTO releases (id, version, channel, sha, migrations_required, breaking_changes,"
        " released_at, signature) VALUES ('old', $1, $2, $3, $4, $5, $6, $7)",
        *(old[k] for k in ("version", "channel", "sha", "migrations_required")),
        *(old[k] for k in ("breaking_changes", "released_at", "signature")),
    )
    answer = await edge.get("/api/releases/old", headers=_admin(settings))
    assert answer.status_code == 200
    assert answer.json()["breaking_changes"] == old["breaking_changes"]
    # The limit is for uploads: the same manifest uploaded now is refused, not stored twice.
    assert (await edge.post("/api/releases", json=old, headers=_admin(settings))).status_code == 422


async def test_report_ids_with_nul_are_refused_before_anything(
    edge: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    body = poll_body("web-1") | {"jobId": "job\u00001", "status": "failed", "step": "smoke"}
    for key in ("channel", "currentVersion"):
        del body[key]
    answer = await post_signed(edge, "/api/updates/report", body, LISTED_SECRET)
    _assert_json_4xx(answer, 422, "jobId")
    assert await db.fetchval("SELECT count(*) FROM job_reports") == 0


async def test_docs_are_served_without_internet(edge: httpx.AsyncClient) -> None:
    page = await edge.get("/docs")
    assert page.status_code == 200
    assets = [part.split('"')[0] for part in page.text.split('="')[1:] if part.startswith("/")]
    assert "/docs-assets/swagger/swagger-ui-bundle.js" in assets
    assert "https://" not in page.text.replace("https://swagger.io", "")
    for asset in assets:
        assert (await edge.get(asset)).status_code == 200, asset
    redoc = await edge.get("/redoc")
    assert "fonts.googleapis" not in redoc.text
    assert (await edge.get("/docs-assets/redoc/redoc.standalone.js")).status_code == 200


async def test_openapi_tells_the_errors_and_agent_bodies_as_answered(
    edge: httpx.AsyncClient,
) -> None:
    schema = (await edge.get("/openapi.json")).json()
    components = schema["components"]["schemas"]
    assert "HTTPValidationError" not in components
    assert components["ValidationErrorOut"]["properties"]["detail"]["type"] == "string"
    upload = schema["paths"]["/api/releases"]["post"]["responses"]
    assert {"200", "201", "401", "409", "413", "422", "503"} <= set(upload)
    assert upload["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ValidationErrorOut"
    )
    assert "404" in schema["paths"]["/api/rollouts/{rollout_id}"]["get"]["responses"]
    report = schema["paths"]["/api/updates/report"]["post"]
    body = report["requestBody"]["content"]["application/json"]["schema"]
    assert {"instanceId", "sentAt", "nonce", "jobId", "status", "step", "message"} <= set(
        body["properties"]
    )
    assert {"200", "401", "403", "404", "409", "413", "422", "503"} <= set(report["responses"])
    assert [p["name"] for p in report["parameters"]] == ["x-agent-signature"]


@pytest.mark.parametrize("path", ["/api/updates/next", "/api/updates/report"])
async def test_agent_paths_answer_other_methods_405_naming_post(
    edge: httpx.AsyncClient, path: str
) -> None:
    """POST on the agent paths is served by the connections themselves (api.connections,
    api.fast_lane); any other method still reaches the router and is told which one the path
    takes."""
    for method in ("GET", "PUT", "DELETE"):
        answer = await edge.request(method, path)
        assert answer.status_code == 405, (method, answer.text)
        assert answer.headers["allow"] == "POST"
        assert "detail" in answer.json()


async def test_temporal_unavailable_is_a_signed_503_with_retry_after(
    settings: ApiSettings, db: asyncpg.Connection
) -> None:
    """An instance reports on its open job while nothing answers at the Temporal address: the
    workflow must hear of the job starting, so the report is refused, signed, and retried."""
    release_id = await seed_release(db, settings)
    spec = RolloutSpec(
        id="r1",
        manifest_id=release_id,
        version="1.4.0",
        channel="stable",
        batch_size=1,
        created_by="admin",
    )
    await rollouts.insert(db, spec)
    deadline = datetime.now(UTC) + timedelta(hours=1)
    job = JobWrite(
        id="j1",
        rollout_id="r1",
        instance_id="web-1",
        batch=1,
        attempt=1,
        status="pending",
        deadline=deadline,
    )
    await jobs.upsert_many(db, [job])
    configured = settings.model_copy(
        update={
            "control_plane_agent_secrets": {"web-1": SecretStr(LISTED_SECRET)},
            "temporal_address": f"127.0.0.1:{free_port()}",
        }
    )
    async with (
        LiveServer(create_app(configured), free_port()) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as client,
    ):
        body = body_for("web-1", jobId="j1", status="in_progress", step="preflight", message=None)
        answer = await post_signed(client, "/api/updates/report", body, LISTED_SECRET)
    assert answer.status_code == 503, answer.text
    assert int(answer.headers["retry-after"]) > 0
    assert "Temporal" in assert_signed_by(answer, LISTED_SECRET, body["nonce"])["detail"]


async def test_admin_writes_answer_503_and_change_nothing_while_temporal_is_unreachable(
    settings: ApiSettings, db: asyncpg.Connection
) -> None:
    release_id = await seed_release(db, settings)
    await rollouts.insert(
        db,
        RolloutSpec(
            id="r-beta",
            manifest_id=release_id,
            version="1.4.0",
            channel="beta",
            batch_size=1,
            created_by="admin",
        ),
    )
    unreachable = settings.model_copy(update={"temporal_address": f"127.0.0.1:{free_port()}"})
    token = settings.control_plane_admin_token.get_secret_value()
    async with (
        LiveServer(create_app(unreachable), free_port()) as server,
        httpx.AsyncClient(
            base_url=server.url, timeout=60, headers={"x-cp-admin-token": token}
        ) as admin,
    ):
        body = {"manifestId": release_id, "channel": "stable", "batchSize": 1}
        created = await admin.post("/api/rollouts", json=body)
        paused = await admin.post("/api/rollouts/r-beta/pause", json={"reason": "x"})

    assert created.status_code == 503, created.text
    assert int(created.headers["retry-after"]) > 0
    assert "nothing was created" in created.json()["detail"]
    assert await db.fetchval("SELECT count(*) FROM rollouts WHERE channel = 'stable'") == 0
    assert paused.status_code == 503, paused.text
    assert int(paused.headers["retry-after"]) > 0
    assert "pause may not have been applied" in paused.json()["detail"]
