"""The OpenAPI document as /docs and /redoc show it, built without servers (no lifespan runs)."""

import re
from typing import Any

import pytest
from pydantic import SecretStr

from api.app import create_app
from api.routers import system
from runtime.build import package_version
from server.settings import ApiSettings


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    settings = ApiSettings(
        database_url="postgresql://nobody@127.0.0.1:1/none",
        control_plane_admin_token=SecretStr("a" * 32),
        control_plane_release_signing_secret=SecretStr("b" * 32),
    )
    return create_app(settings).openapi()


@pytest.mark.servers  # /version runs `git rev-parse` for the commit
async def test_the_document_and_version_name_the_same_version(document: dict[str, Any]) -> None:
    answer = await system.version()
    assert document["info"]["version"] == answer["version"] == package_version()


def _descriptions(node: object) -> list[str]:
    if isinstance(node, dict):
        own = [node["description"]] if isinstance(node.get("description"), str) else []
        return own + [d for value in node.values() for d in _descriptions(value)]
    if isinstance(node, list):
        return [d for value in node for d in _descriptions(value)]
    return []


def test_no_description_reads_as_html(document: dict[str, Any]) -> None:
    """Swagger UI and ReDoc render descriptions as Markdown, HTML included: `<the body>` would
    vanish as an unknown tag. Inside backticks it is code and shows as written."""
    outside_code = [re.sub(r"`[^`]*`", "", d) for d in _descriptions(document)]
    assert not [d for d in outside_code if re.search(r"<[A-Za-z/]", d)]


def _properties(document: dict[str, Any], schema: str) -> dict[str, Any]:
    return document["components"]["schemas"][schema]["properties"]


def _agent_body(document: dict[str, Any], path: str) -> dict[str, Any]:
    body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    return body["schema"]["properties"]


def test_versions_and_timestamps_have_their_formats(document: dict[str, Any]) -> None:
    """What clients and fuzzers generate from: a semver pattern and RFC 3339 date-times."""
    for schema in ("NewRelease", "Release"):
        fields = _properties(document, schema)
        assert fields["version"]["format"] == "semver"
        assert re.fullmatch(fields["version"]["pattern"], "2.0.0-rc.1+build.5")
        assert not re.fullmatch(fields["version"]["pattern"], "1.2")
        assert fields["released_at"]["format"] == "date-time"
    poll = _agent_body(document, "/api/updates/next")
    assert poll["currentVersion"]["format"] == "semver"
    assert poll["sentAt"]["format"] == "date-time"
    assert _agent_body(document, "/api/updates/report")["sentAt"]["format"] == "date-time"
