"""End to end: a host whose agent never starts its job is `unreachable`, counted against
maxUnreachable, not maxFailures; a job whose step stalls is `timed_out` at that step. Real agent
processes running shell steps, the real API, worker, Temporal dev server and PostgreSQL."""

import signal

import asyncpg
import httpx

from server.settings import ApiSettings
from tests.conftest import LiveServer
from tests.fixtures_agents import AgentFactory
from tests.fixtures_fleet import FLEET_TOKEN, registered, rollout_where
from tests.fixtures_temporal import eventually, seed_release
from tests.test_fleet_end_to_end import job_of, start_rollout

# Long enough for a live agent to run every step on a loaded machine, short for the test.
JOB_TIMEOUT = 10


async def test_a_stopped_agent_is_unreachable_under_its_own_limit_and_retry_runs_it_again(
    plane: LiveServer,
    admin: httpx.AsyncClient,
    agent_host: AgentFactory,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    live = await agent_host(plane.url, FLEET_TOKEN, instance_id="web-1")
    stopped = await agent_host(plane.url, FLEET_TOKEN, instance_id="web-2")
    await registered(admin, 2)
    stopped.send(signal.SIGSTOP)  # known to the control plane, polls no more
    release_id = await seed_release(db, dev_settings, version="1.4.0")
    rollout = await start_rollout(admin, release_id, jobTimeoutSeconds=JOB_TIMEOUT)

    paused = await rollout_where(admin, rollout["id"], lambda r: r["status"] == "paused")
    # maxFailures (0) is untouched: the pause is the unreachable limit's, with its own reason.
    assert paused["pausedReason"] == "1 host unreachable (max 0): web-2"
    assert paused["counts"] == {"succeeded": 1, "unreachable": 1}
    assert (job_of(paused, "web-2")["status"], job_of(paused, "web-2")["step"]) == (
        "unreachable",
        None,
    )
    assert live.steps()[-1] == "switch 1.4.0" and stopped.steps() == []
    unreachable_id = job_of(paused, "web-2")["id"]

    async def stored_unreachable() -> bool:  # the view is the workflow's; the row follows it
        stored = await db.fetchval("SELECT status FROM update_jobs WHERE id = $1", unreachable_id)
        return stored == "unreachable"

    await eventually(stored_unreachable)

    # The host comes back: a retry runs its job again, as it does a timed-out one. Retried once
    # it polls again: an agent resumed on a loaded machine may first back off from a poll that
    # timed out while it was stopped, and the retried job has the same 10 s to be started.
    resumed_at = await db.fetchval("SELECT now()")
    stopped.send(signal.SIGCONT)

    async def polling_again() -> bool:
        seen = await db.fetchval("SELECT last_seen_at FROM instances WHERE instance_id = 'web-2'")
        return bool(seen > resumed_at)

    await eventually(polling_again, timeout=120)
    retried = await admin.post(f"/api/rollouts/{rollout['id']}/retry")
    assert retried.status_code == 200, retried.text
    done = await rollout_where(admin, rollout["id"], lambda r: r["status"] == "completed")
    assert done["counts"] == {"succeeded": 2}
    assert stopped.steps()[-1] == "switch 1.4.0"


async def test_a_stalled_step_times_out_at_that_step(
    plane: LiveServer,
    admin: httpx.AsyncClient,
    agent_host: AgentFactory,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    host = await agent_host(plane.url, FLEET_TOKEN, instance_id="web-1", block_at="pull")
    await registered(admin, 1)
    release_id = await seed_release(db, dev_settings, version="1.4.0")
    rollout = await start_rollout(admin, release_id, jobTimeoutSeconds=JOB_TIMEOUT)
    await host.wait_blocked("pull")

    paused = await rollout_where(admin, rollout["id"], lambda r: r["status"] == "paused")
    assert paused["pausedReason"] == "1 job failed (max 0): web-1 timed_out at pull"
    assert (job_of(paused, "web-1")["status"], job_of(paused, "web-1")["step"]) == (
        "timed_out",
        "pull",
    )
    assert paused["counts"] == {"timed_out": 1}
