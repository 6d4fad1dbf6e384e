"""Reports that reach an API process together go to their rollout as one signal
(temporal_client.report_signals), and each is answered only once that signal was delivered."""

import asyncio
import uuid

import asyncpg
import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from server.settings import ApiSettings
from temporal_client.report_signals import ReportSignals
from temporal_client.rollouts import RolloutGone
from tests.test_rollout_workflow import TIMEOUT, outcome, start, view
from workflows.rollout_models import JobReportSignal


def _signals_sent(history_events: list) -> list[str]:
    return [
        e.workflow_execution_signaled_event_attributes.signal_name
        for e in history_events
        if e.HasField("workflow_execution_signaled_event_attributes")
    ]


async def test_reports_arriving_together_are_one_signal_taken_in_order(
    time_skipping_env: WorkflowEnvironment,
    ts_worker: Worker,
    ts_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    client = time_skipping_env.client
    spec = await start(client, db, ts_settings, ["a", "b", "c"], batch_size=3)
    jobs = (await view(client, spec)).jobs
    signals = ReportSignals(client, timeout=TIMEOUT)
    # Each job's start, then its end: in one signal, the order decides the outcome.
    reports = [
        JobReportSignal(job_id=job.id, instance_id=job.instance_id, status=status, step="health")
        for status in ("in_progress", "succeeded")
        for job in jobs
    ]
    await asyncio.gather(*(signals.deliver(spec.id, r) for r in reports))

    result = await outcome(client, spec)
    assert (result.status, result.counts) == ("completed", {"succeeded": 3})
    history = await client.get_workflow_handle(f"rollout-{spec.id}").fetch_history()
    assert _signals_sent(list(history.events)) == ["job_report_batch"]


async def test_every_report_of_a_signal_that_fails_gets_its_failure(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    signals = ReportSignals(time_skipping_env.client, timeout=TIMEOUT)
    gone = uuid.uuid4().hex  # no such rollout
    reports = [
        JobReportSignal(job_id=f"j{n}", instance_id=f"web-{n}", status="succeeded")
        for n in range(3)
    ]
    results = await asyncio.gather(
        *(signals.deliver(gone, r) for r in reports), return_exceptions=True
    )
    assert [type(r) for r in results] == [RolloutGone] * 3
    with pytest.raises(RolloutGone):  # and the next report is sent on its own, not stuck
        await signals.deliver(gone, reports[0])
