"""Health confirmation with retries until a deadline, and the per-step timeout."""

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from devstack.ports import free_port
from tests.conftest import LiveServer
from tests.fake_control_plane import FakeControlPlane
from tests.fixtures_agents import AgentFactory

Plane = tuple[FakeControlPlane, str]


@dataclass
class FlakyService:
    """The updated service's health endpoint: unhealthy for the first `failures` checks."""

    failures: int
    hits: int = 0

    async def health(self, _: Request) -> PlainTextResponse:
        self.hits += 1
        healthy = self.hits > self.failures
        return PlainTextResponse("ok" if healthy else "no", 200 if healthy else 503)


@pytest.fixture
async def service_factory() -> AsyncIterator:
    async with contextlib.AsyncExitStack() as servers:

        async def serve(failures: int) -> tuple[FlakyService, str]:
            service = FlakyService(failures)
            app = Starlette(routes=[Route("/healthz", service.health)])
            server = await servers.enter_async_context(LiveServer(app, free_port()))
            return service, f"{server.url}/healthz"

        yield serve


def _health_env(url: str, retries: int) -> dict[str, str]:
    return {
        "UPDATE_HEALTHCHECK_URL": url,
        "UPDATE_HEALTHCHECK_RETRIES": str(retries),
        "UPDATE_HEALTHCHECK_INTERVAL": "0.05",
        "UPDATE_HEALTHCHECK_TIMEOUT": "10",
    }


async def test_health_is_retried_until_it_answers_2xx(
    fake_control_plane: Plane, agent_host: AgentFactory, service_factory
) -> None:
    plane, url = fake_control_plane
    service, health_url = await service_factory(failures=2)
    job_id = plane.add_job("host-1", "1.1.0")
    await agent_host(url, plane.secret, extra_env=_health_env(health_url, retries=5))

    await plane.wait_until(lambda: plane.final_report(job_id) is not None)
    assert plane.reports_of(job_id)[-1] == ("succeeded", "health")
    assert service.hits == 3


async def test_unhealthy_after_all_retries_is_rolled_back(
    fake_control_plane: Plane, agent_host: AgentFactory, service_factory
) -> None:
    plane, url = fake_control_plane
    service, health_url = await service_factory(failures=100)
    job_id = plane.add_job("host-1", "1.1.0")
    host = await agent_host(url, plane.secret, extra_env=_health_env(health_url, retries=3))

    await plane.wait_until(lambda: plane.final_report(job_id) is not None)
    assert plane.reports_of(job_id)[-2:] == [("in_progress", "rollback"), ("rolled_back", "health")]
    assert "not healthy after 3 attempt(s): HTTP 503" in plane.final_report(job_id)["message"]
    assert service.hits == 3
    assert host.steps()[-1] == "rollback 1.1.0"
    assert host.state()["current_version"] == "1.0.0"


async def test_a_step_over_its_timeout_is_killed_and_rolled_back(
    fake_control_plane: Plane, agent_host: AgentFactory
) -> None:
    plane, url = fake_control_plane
    job_id = plane.add_job("host-1", "1.1.0")
    # Long enough that no quick step before the blocked one runs out on a VM that stalls for
    # a third of a second at times (benchmarks/cpu_stalls.py).
    host = await agent_host(
        url, plane.secret, block_at="smoke", extra_env={"UPDATE_STEP_TIMEOUT": "3"}
    )

    await plane.wait_until(lambda: plane.final_report(job_id) is not None)
    final = plane.final_report(job_id)
    assert (final["status"], final["step"]) == ("rolled_back", "smoke")
    assert "smoke failed: timed out after 3 s" in final["message"]
    assert host.steps()[-2:] == ["smoke 1.1.0", "rollback 1.1.0"]


async def test_steps_get_the_release_env_but_not_the_agent_secret(
    fake_control_plane: Plane, agent_host: AgentFactory, tmp_path
) -> None:
    plane, url = fake_control_plane
    job_id = plane.add_job("host-1", "1.1.0", migrations_required=False)
    env_file = tmp_path / "backup.env"
    await agent_host(url, plane.secret, extra_env={"UPDATE_BACKUP_CMD": f"env > {env_file}"})

    await plane.wait_until(lambda: plane.final_report(job_id) is not None)
    seen = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    release_env = {k: v for k, v in seen.items() if k.startswith("UPDATE_") and "CMD" not in k}
    assert release_env == {
        "UPDATE_VERSION": "1.1.0",
        "UPDATE_SHA": "0123abcd",
        "UPDATE_CHANNEL": "stable",
        "UPDATE_PREVIOUS_VERSION": "1.0.0",
        "UPDATE_REVERT": "false",
        "UPDATE_MIGRATIONS_REQUIRED": "false",
        "UPDATE_JOB_ID": job_id,
        "UPDATE_STEP_TIMEOUT": "30",
    }
    assert "AGENT_SECRET" not in seen
    assert plane.secret not in env_file.read_text()
