"""Health gates on real servers: a real Prometheus scrapes an endpoint whose value the test changes
mid-bake, and the rollout pauses with the gate, its value and its threshold; an HTTP probe that
answers 503 pauses it too; a gate that passes lets auto-advance go on."""

import functools
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from temporalio.testing import WorkflowEnvironment

from activities.rollouts import RolloutActivities
from devstack.ports import free_port
from server.settings import ApiSettings
from tests.conftest import LiveServer
from tests.fixtures_temporal import eventually, seed_instances, seed_release, terminate_rollouts
from tests.test_rollout_api import create, finish_batch, status_becomes
from worker.main import build_worker

PROMETHEUS = shutil.which("prometheus")


class Signal:
    """What the scraped endpoint and the probed URL answer, changed by the test."""

    def __init__(self) -> None:
        self.error_ratio = 0.0
        self.probe_status = 200

    def app(self) -> Starlette:
        async def metrics(_: object) -> PlainTextResponse:
            return PlainTextResponse(f"test_error_ratio {self.error_ratio}\n")

        async def probe(_: object) -> Response:
            return Response(status_code=self.probe_status)

        return Starlette(routes=[Route("/metrics", metrics), Route("/healthz", probe)])


@pytest.fixture
async def signal() -> AsyncIterator[tuple[Signal, str]]:
    source = Signal()
    async with LiveServer(source.app(), free_port()) as server:
        yield source, server.url


@pytest.fixture
async def prometheus(signal: tuple[Signal, str], tmp_path: Path) -> AsyncIterator[str]:
    if PROMETHEUS is None:
        pytest.skip("Debian's prometheus is not installed (make test installs it where it can)")
    _, url = signal
    target = url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs: [{{job_name: test, static_configs: [{{targets: ['{target}']}}]}}]\n"
    )
    port = free_port()
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:

            async def scraped() -> bool:
                try:
                    answer = await client.get("/api/v1/query", params={"query": "test_error_ratio"})
                except httpx.HTTPError:
                    return False
                return answer.is_success and bool(answer.json()["data"]["result"])

            await eventually(scraped, timeout=60)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
async def gate_worker(
    dev_env: WorkflowEnvironment, dev_settings: ApiSettings, worker_pool: asyncpg.Pool, request
) -> AsyncIterator[None]:
    """The worker, with PROMETHEUS_URL when the test has a Prometheus."""
    url = request.getfixturevalue("prometheus") if "prometheus" in request.fixturenames else None
    settings = dev_settings.model_copy(update={"prometheus_url": url})
    async with build_worker(dev_env.client, settings, RolloutActivities(worker_pool)):
        yield
    await terminate_rollouts(dev_env.client, worker_pool)


async def _running(admin: httpx.AsyncClient, rollout_id: str, batch: int) -> dict | None:
    view = (await admin.get(f"/api/rollouts/{rollout_id}")).json()
    return view if (view["status"], view["currentBatch"]) == ("running", batch) else None


async def _settle_batch(
    env: WorkflowEnvironment, admin: httpx.AsyncClient, rollout_id: str, batch: int
) -> dict:
    running = await eventually(functools.partial(_running, admin, rollout_id, batch))
    await finish_batch(env, running)
    return running


async def test_a_prometheus_gate_that_fails_mid_bake_pauses_the_rollout(
    dev_env: WorkflowEnvironment,
    prometheus: str,
    gate_worker: None,
    signal: tuple[Signal, str],
    dev_admin: httpx.AsyncClient,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    source, _ = signal
    release_id = await seed_release(db, dev_settings)
    await seed_instances(db, ["a", "b", "c"])
    gate = {"name": "errors", "kind": "prometheus", "query": "test_error_ratio", "below": 0.5}
    created = await create(
        dev_admin,
        release_id,
        batchSize=1,
        autoAdvance=True,
        bakeSeconds=4,
        gateIntervalSeconds=1,
        gates=[gate],
    )
    assert created.status_code == 201, created.text
    rollout_id = created.json()["id"]
    await _settle_batch(dev_env, dev_admin, rollout_id, 1)  # its gate passes: batch 2 goes out
    second = await _settle_batch(dev_env, dev_admin, rollout_id, 2)
    assert second["currentBatch"] == 2 and "gates 1/1 passing" in second["details"]

    await status_becomes(dev_admin, rollout_id, "awaiting_advance")  # batch 2 bakes
    source.error_ratio = 0.9
    paused = await status_becomes(dev_admin, rollout_id, "paused")
    assert paused["pausedReason"] == "gate errors: 0.9 is not below 0.5"
    assert paused["currentBatch"] == 2  # batch 3 did not go out

    async def gates_audited() -> list[tuple[str, int]]:
        # Written with the read model, which may follow the live view's `paused` by a write.
        audit = await db.fetch(
            "SELECT action, detail FROM audit_log"
            " WHERE subject = $1 AND action LIKE 'rollout.gates%' ORDER BY id",
            f"rollout:{rollout_id}",
        )
        found = [(a["action"], a["detail"]["batch"]) for a in audit]
        return found if len(found) == 2 else []

    assert await eventually(gates_audited) == [
        ("rollout.gates_passed", 1),
        ("rollout.gates_failed", 2),
    ]


async def test_an_http_gate_answering_503_pauses_the_rollout(
    dev_env: WorkflowEnvironment,
    gate_worker: None,
    signal: tuple[Signal, str],
    dev_admin: httpx.AsyncClient,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    source, url = signal
    source.probe_status = 503
    release_id = await seed_release(db, dev_settings)
    await seed_instances(db, ["a", "b"])
    gate = {"name": "app", "kind": "http", "url": f"{url}/healthz"}
    created = await create(dev_admin, release_id, batchSize=1, autoAdvance=True, gates=[gate])
    assert created.status_code == 201, created.text
    await _settle_batch(dev_env, dev_admin, created.json()["id"], 1)
    paused = await status_becomes(dev_admin, created.json()["id"], "paused")
    assert paused["pausedReason"] == f"gate app: {url}/healthz answered HTTP 503"
