"""A host whose job the control plane ended (an abort cancelled it while the agent was frozen
with the job in hand; its deadline passed while a step hung) learns it from the refusal of its
next report: it runs no further step, rolls back what ran, and the control plane records the
host's own end as the job's `hostOutcome`, without changing its decision. The host's marker file
and what the control plane shows (job, rollout view, timeline, CLI) agree.

Real agent processes with shell steps that each take half a second (as real steps take time,
the refusal lands while the step it was about runs), the real API, worker, Temporal dev server
and PostgreSQL."""

import signal
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.settings import ApiSettings
from tests.conftest import LiveServer
from tests.fixtures_agents import AgentFactory, AgentHost
from tests.fixtures_fleet import FLEET_TOKEN, registered, rollout_where
from tests.fixtures_temporal import eventually, seed_release
from tests.test_admin_cli import rollout_cli
from tests.test_fleet_end_to_end import job_of, start_rollout

STEP_SECONDS = {"AGENT_TEST_STEP_SECONDS": "0.5"}


@dataclass
class Stage:
    plane: LiveServer
    admin: httpx.AsyncClient
    agent_host: AgentFactory
    settings: ApiSettings
    db: asyncpg.Connection

    async def host(self, **options: Any) -> tuple[AgentHost, str]:
        """Host web-1 on 1.0.0, its steps half a second each; and the release 1.4.0's id."""
        host = await self.agent_host(
            self.plane.url, FLEET_TOKEN, instance_id="web-1", extra_env=STEP_SECONDS, **options
        )
        await registered(self.admin, 1)
        return host, await seed_release(self.db, self.settings, version="1.4.0")


@pytest.fixture
def stage(
    plane: LiveServer,
    admin: httpx.AsyncClient,
    agent_host: AgentFactory,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> Stage:
    return Stage(plane, admin, agent_host, dev_settings, db)


async def sample(admin: httpx.AsyncClient, name: str, **labels: str) -> float:
    """A sample of the API's /metrics (0 when absent)."""
    text = (await admin.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return found.value
    return 0.0


async def job_where(admin: httpx.AsyncClient, job_id: str, check: Any) -> dict:
    async def probe() -> dict | None:
        job = (await admin.get(f"/api/updates/jobs/{job_id}")).json()
        return job if check(job) else None

    return await eventually(probe, timeout=60)


def timeline(job: dict) -> list[tuple[str, str]]:
    return [(step["step"], step["outcome"]) for step in job["timeline"]]


async def test_a_host_given_a_job_then_cancelled_rolls_back_and_says_so(stage: Stage) -> None:
    host, release_id = await stage.host()
    admin, plane = stage.admin, stage.plane

    async def poll_held() -> bool:
        return await sample(admin, "rollout_held_polls") >= 1

    await eventually(poll_held)
    host.send(signal.SIGSTOP)  # frozen in its held poll
    handed_out = await sample(admin, "rollout_agent_polls_total", outcome="job")
    rollout = await start_rollout(admin, release_id, batchSize=1)

    async def job_answered() -> bool:  # into the frozen agent's socket
        return await sample(admin, "rollout_agent_polls_total", outcome="job") > handed_out

    await eventually(job_answered)
    aborted = await admin.post(f"/api/rollouts/{rollout['id']}/abort")
    assert aborted.status_code == 200, aborted.text
    job_id = job_of(aborted.json(), "web-1")["id"]
    assert job_of(aborted.json(), "web-1")["status"] == "cancelled"
    host.send(signal.SIGCONT)

    job = await job_where(admin, job_id, lambda j: j["hostOutcome"] is not None)
    # The refusal of its first report came while backup ran: nothing after it, then rollback.
    assert host.steps() == ["backup 1.4.0", "rollback 1.4.0"]
    assert host.current() == "1.0.0" and host.state()["current_version"] == "1.0.0"
    assert (job["status"], job["hostOutcome"], job["hostStep"]) == (
        "cancelled",
        "rolled_back",
        "backup",
    )
    assert timeline(job) == [("backup", "cancelled"), ("rollback", "rolled_back")]
    assert "the control plane ended the job (cancelled)" in job["timeline"][0]["message"]
    view = (await admin.get(f"/api/rollouts/{rollout['id']}")).json()
    assert view["status"] == "aborted" and view["counts"] == {"cancelled": 1}
    assert (job_of(view, "web-1")["status"], job_of(view, "web-1")["hostOutcome"]) == (
        "cancelled",
        "rolled_back",
    )
    assert "recorded as the host's outcome" in host.log()

    code, out, _ = await rollout_cli(plane, stage.settings, "jobs", "show", job_id)
    assert code == 0
    assert "host rolled_back at backup (reported after the job ended" in out
    code, out, _ = await rollout_cli(plane, stage.settings, "rollouts", "get", rollout["id"])
    assert code == 0
    assert f"web-1 cancelled; host rolled_back at backup: rollout jobs show {job_id}" in out


async def test_a_host_whose_job_timed_out_under_it_rolls_back_and_a_retry_then_succeeds(
    stage: Stage,
) -> None:
    host, release_id = await stage.host(block_at="smoke")
    admin = stage.admin
    rollout = await start_rollout(admin, release_id, batchSize=1, jobTimeoutSeconds=6)
    await host.wait_blocked("smoke")
    paused = await rollout_where(
        admin, rollout["id"], lambda r: job_of(r, "web-1")["status"] == "timed_out"
    )
    job_id = job_of(paused, "web-1")["id"]
    host.open_gate()  # smoke ends; switch starts, and its report is refused: timed out

    job = await job_where(admin, job_id, lambda j: j["hostOutcome"] is not None)
    assert host.steps() == [
        f"{step} 1.4.0" for step in ("backup", "pull", "migrate", "smoke", "switch", "rollback")
    ]
    assert host.current() == "1.0.0"  # switched, then switched back
    assert (job["status"], job["step"], job["hostOutcome"], job["hostStep"]) == (
        "timed_out",
        "smoke",
        "rolled_back",
        "switch",
    )
    assert timeline(job)[-3:] == [
        ("smoke", "succeeded"),
        ("switch", "timed_out"),
        ("rollback", "rolled_back"),
    ]
    view = await rollout_where(admin, rollout["id"], lambda r: r["status"] == "paused")
    assert job_of(view, "web-1")["hostOutcome"] == "rolled_back"

    # The host is back on 1.0.0, so a retry's preflight passes and the update completes.
    retried = await admin.post(f"/api/rollouts/{rollout['id']}/retry")
    assert retried.status_code == 200, retried.text
    done = await rollout_where(admin, rollout["id"], lambda r: r["status"] == "completed")
    assert host.current() == "1.4.0"
    assert [j["status"] for j in done["batches"][0]["jobs"]] == ["timed_out", "succeeded"]
