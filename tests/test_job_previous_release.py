"""What a fleet revert goes back to (issue 29's first step): each job records the version its host
ran when the job was made, and that version's release on the channel when it was uploaded."""

import asyncpg
import httpx
from temporalio.worker import Worker

from server.settings import ApiSettings
from tests.fixtures_temporal import seed_instances, seed_release
from tests.test_rollout_api import create, status_becomes


async def test_each_job_records_what_its_host_ran_before(
    dev_worker: Worker,
    dev_admin: httpx.AsyncClient,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    earlier = await seed_release(db, dev_settings, version="1.3.0")
    release_id = await seed_release(db, dev_settings, version="1.4.0")
    await seed_release(db, dev_settings, version="1.2.0", channel="beta")  # another channel's
    await seed_instances(db, ["on-release"], version="1.3.0")
    await seed_instances(db, ["on-build"], version="1.2.0")  # never uploaded on stable
    created = await create(dev_admin, release_id, batchSize=2)
    assert created.status_code == 201, created.text
    rollout = await status_becomes(dev_admin, created.json()["id"], "running")
    jobs = {j["instanceId"]: j for j in rollout["batches"][0]["jobs"]}
    assert (jobs["on-release"]["previousVersion"], jobs["on-release"]["previousReleaseId"]) == (
        "1.3.0",
        earlier,
    )
    assert (jobs["on-build"]["previousVersion"], jobs["on-build"]["previousReleaseId"]) == (
        "1.2.0",
        None,
    )
    # The instance's row moves on with its polls; the job keeps what it was.
    await db.execute("UPDATE instances SET current_version = '1.4.0'")
    again = (await dev_admin.get(f"/api/rollouts/{created.json()['id']}")).json()
    assert {j["previousVersion"] for j in again["batches"][0]["jobs"]} == {"1.3.0", "1.2.0"}
