"""A rollout with a maintenance window, on the time-skipping Temporal server: batch 1 waits for the
window to open; a window closing in the middle of a batch holds its pending jobs (their deadlines
stopped) while a running job finishes or times out; it opens again the next day and the rollout
goes on; an advance outside it is refused with the next opening unless forced."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from domain.windows import DAYS, MaintenanceWindow
from server.settings import ApiSettings
from temporal_client import rollouts as rollout_client
from tests.fixtures_temporal import skip_time
from tests.test_rollout_workflow import TIMEOUT, report, settles_to, start, view

ZONE = "America/New_York"  # not UTC, and not the machine's zone


def _daily_hour_from(now: datetime, hours_ahead: int) -> MaintenanceWindow:
    """Every day, one hour, starting `hours_ahead` after `now` (local time of ZONE)."""
    opens = (now + timedelta(hours=hours_ahead)).astimezone(ZoneInfo(ZONE))
    closes = opens + timedelta(hours=1)
    return MaintenanceWindow.model_validate(
        {
            "timezone": ZONE,
            "ranges": [{"days": list(DAYS), "start": f"{opens:%H:%M}", "end": f"{closes:%H:%M}"}],
        }
    )


async def test_a_window_holds_the_rollout_outside_it_and_releases_it_inside(
    time_skipping_env: WorkflowEnvironment,
    ts_worker: Worker,
    ts_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    client = time_skipping_env.client
    now = (await time_skipping_env.get_current_time()).astimezone(UTC)
    window = _daily_hour_from(now.replace(second=0, microsecond=0), hours_ahead=2)
    spec = await start(
        client,
        db,
        ts_settings,
        ["a", "b", "c"],
        window=window,
        job_timeout_seconds=7200,
        max_failures=1,
    )
    held = await settles_to(client, spec, "waiting")
    assert held.current_batch == 0  # batch 1 waits for the window
    assert "outside its maintenance window (opens" in held.details

    await skip_time(time_skipping_env, 2 * 3600 + 60)
    opened = await settles_to(client, spec, "running")
    assert (opened.current_batch, [j.instance_id for j in opened.jobs]) == (1, ["a", "b"])
    a, b = opened.jobs
    await report(client, spec, a, "in_progress", "migrate")

    await skip_time(time_skipping_env, 3600)  # the window closes mid-batch
    closed = await settles_to(client, spec, "waiting")
    with pytest.raises(rollout_client.ActionRefused, match="outside the rollout's maintenance"):
        await rollout_client.run_action(
            client, spec.id, "retry", rollout_client.action_input("retry", "ops"), timeout=TIMEOUT
        )
    await skip_time(time_skipping_env, 21 * 3600)  # a day later, just before it opens again
    overnight = await view(client, spec)
    statuses = {j.instance_id: j.status for j in overnight.jobs}
    assert statuses == {"a": "timed_out", "b": "pending"}  # a ran out of time; b was withheld
    assert next(j for j in overnight.jobs if j.instance_id == "b").deadline == b.deadline
    assert closed.status == "waiting"

    await skip_time(time_skipping_env, 2 * 3600)  # open again
    reopened = await settles_to(client, spec, "running")
    b_again = next(j for j in reopened.jobs if j.instance_id == "b")
    assert b_again.deadline > b.deadline  # its whole time again, from the opening
    await report(client, spec, b_again, "in_progress", "preflight")
    await report(client, spec, b_again, "succeeded")
    await skip_time(time_skipping_env, 3600)  # closed: batch 1 settled, batch 2 waits for it
    waiting = await settles_to(client, spec, "waiting")
    assert waiting.current_batch == 1

    forced = await rollout_client.run_action(
        client,
        spec.id,
        "advance",
        rollout_client.action_input("advance", "ops", force=True),
        timeout=TIMEOUT,
    )
    assert (forced.status, forced.current_batch) == ("running", 2)  # out of hours, on purpose
    events = await db.fetch(
        "SELECT action, detail FROM audit_log WHERE subject = $1 ORDER BY id", f"rollout:{spec.id}"
    )
    actions = [e["action"] for e in events]
    assert actions.count("rollout.window_opened") == 2 and "rollout.window_closed" in actions
    assert {"forced": True} in [e["detail"] for e in events if e["action"] == "rollout.advance"]


async def test_a_window_keeps_its_local_hours_across_a_daylight_saving_change(
    time_skipping_env: WorkflowEnvironment,
    ts_worker: Worker,
    ts_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    """Sundays 01:00-04:00 in New York: three hours a week, but two on 14 March 2027, when the
    clocks go forward at 02:00 (01:00 EST is 06:00 UTC, 04:00 EDT is 08:00 UTC)."""
    window = MaintenanceWindow.model_validate(
        {"timezone": ZONE, "ranges": [{"days": ["sun"], "start": "01:00", "end": "04:00"}]}
    )
    spec = await start(
        client := time_skipping_env.client,
        db,
        ts_settings,
        ["a", "b"],
        window=window,
        job_timeout_seconds=30 * 86_400,  # the weeks skipped never time a job out
    )
    now = (await time_skipping_env.get_current_time()).astimezone(UTC)
    change = datetime(2027, 3, 14, 6, 0, tzinfo=UTC)
    assert now < change - timedelta(days=1), "the test server's clock is past the change"

    async def at(moment: datetime) -> str:
        current = (await time_skipping_env.get_current_time()).astimezone(UTC)
        await skip_time(time_skipping_env, (moment - current).total_seconds())
        return (await view(client, spec)).status

    assert await at(change - timedelta(minutes=2)) == "waiting"
    assert await at(change + timedelta(minutes=2)) == "running"  # 01:02 EST
    assert await at(change + timedelta(hours=1, minutes=58)) == "running"  # 03:58 EDT
    assert await at(change + timedelta(hours=2, minutes=2)) == "waiting"  # 04:02 EDT: closed
