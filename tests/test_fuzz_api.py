"""Schema-driven fuzzing of the real API on a real PostgreSQL: no 5xx and no schema violation.

Schemathesis generates requests from /openapi.json (valid and invalid ones), with the admin
token and correctly signed agent bodies (tests/schemathesis_hooks.py), and checks every answer
against the schema. The example count is bounded so the run stays within about a minute.
"""

import asyncio
import os
import secrets
import sys
from pathlib import Path

import httpx
from pydantic import SecretStr

from api.app import create_app
from devstack.ports import free_port
from server.settings import ApiSettings
from tests.agent_requests import poll_body, post_signed
from tests.conftest import LiveServer
from tests.manifests import hand_signed

AGENT_TOKEN = secrets.token_hex(16)
EXAMPLES_PER_OPERATION = 15
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
    ]
)


async def test_fuzzing_the_schema_finds_no_5xx_and_no_schema_violation(
    settings: ApiSettings, repo_root: Path, tmp_path: Path
) -> None:
    configured = settings.model_copy(
        update={
            "control_plane_agent_token": SecretStr(AGENT_TOKEN),
            # Nothing listens here: a request that reached Temporal would fail fast, not hang.
            "temporal_address": f"127.0.0.1:{free_port()}",
        }
    )
    admin_token = settings.control_plane_admin_token.get_secret_value()
    signing_secret = settings.control_plane_release_signing_secret.get_secret_value()
    async with (
        LiveServer(create_app(configured), free_port()) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as client,
    ):
        # Some rows, so list answers have items whose schema gets checked.
        headers = {"x-cp-admin-token": admin_token}
        uploaded = await client.post(
            "/api/releases", json=hand_signed(signing_secret), headers=headers
        )
        assert uploaded.status_code == 201
        assert (
            await post_signed(client, "/api/updates/next", poll_body("web-1"), AGENT_TOKEN)
        ).is_success

        process = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("st")),
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            CHECKS,
            "--max-examples",
            str(EXAMPLES_PER_OPERATION),
            "--phases",
            "examples,fuzzing",
            # Health that includes Temporal is 503 by design here: this test runs no Temporal.
            "--exclude-path-regex",
            "^/health(/ready)?$",
            "--seed",
            "9",
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--generation-allow-x00",
            "true",
            "--header",
            f"x-cp-admin-token: {admin_token}",
            "--no-color",
            cwd=tmp_path,  # schemathesis keeps a cache of its findings in the working folder
            env={
                **os.environ,
                "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
                "FUZZ_AGENT_TOKEN": AGENT_TOKEN,
                "PYTHONPATH": str(repo_root),
            },
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await process.communicate()
    report = output.decode(errors="replace")
    print(report)  # shown with -s, or with the failure
    assert process.returncode == 0, report
    assert "No issues found" in report or "passed" in report, report
