"""Replay: histories recorded from real runs must replay on the current RolloutWorkflow, so a
change that would break running rollouts (non-determinism) fails CI.

Files in tests/histories, one per run of workflow `rollout-<scenario>`:
- `<scenario>.json` is a scenario that ran in one run;
- `<scenario>.<n>.json` is run n (from 1) of a scenario that continued-as-new: the chain is
  every such file, and every run of it is replayed, not just the first;
- `.json.gz` is the same, gzip-compressed, for a run over about 1 MB.

Until the first tagged release a change to the workflow re-records the histories it affects
(docs/temporal.md, "Changing the workflow"):
    ROLLOUT_RECORD_HISTORIES=1 TEMPORAL_DEBUG=1 .venv/bin/pytest tests/test_rollout_replay.py
(TEMPORAL_DEBUG turns off the SDK's 2 s deadlock detection, which a workflow task of hundreds
of signals can trip on a loaded machine; it changes nothing in the histories.)
which runs the scenarios below (on the time-skipping server; continue_mid_batch,
continue_at_boundary and cancel_request on the dev server) and writes tests/histories/. Add
`-k <test>` to record one scenario only. From the first tagged release on, old histories are
kept (under another scenario name) so that rollouts already running stay replayable.
"""

import asyncio
import contextlib
import gzip
import os
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Final

import asyncpg
import pytest
from temporalio import activity
from temporalio.client import Client, WorkflowFailureError, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import is_cancelled_exception
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from activities.rollouts import RolloutActivities
from domain.rollouts import RolloutSpec, rollout_workflow_id
from server.settings import ApiSettings
from store import jobs
from temporal_client import rollouts as rollout_client
from tests.fixtures_temporal import (
    eventually,
    fetch_chain,
    seed_instances,
    seed_release,
    skip_time,
)
from tests.test_rollout_workflow import (
    TIMEOUT,
    act,
    outcome,
    report,
    settles_to,
    start,
    view,
)
from worker.main import build_worker
from workflows.rollout import SIGNAL_BUDGET, RolloutWorkflow
from workflows.rollout_models import (
    AbortInput,
    JobReportSignal,
    JobState,
    PauseInput,
    RecordProgressInput,
    RecordProgressResult,
    RolloutInput,
    RolloutState,
)

HISTORIES = Path(__file__).parent / "histories"
RECORDING = os.environ.get("ROLLOUT_RECORD_HISTORIES") == "1"
FILE_NAME = re.compile(r"(?P<scenario>[a-z_]+)(\.(?P<run>\d+))?\.json(\.gz)?")
SCENARIOS = {
    "lifecycle",
    "abort",
    "continue_mid_batch",
    "continue_at_boundary",
    "timeout_retry_abort",
    "poison_text",
    "abort_before_first_batch",
    "batch_read_locally",
    "cancel_request",
    "timed_out_at_reported_step",
    "unreachable",
    "answer_when_written",
    "report_while_written",
    "reports_in_one_signal",
    "auto_revert",
}
# How a scenario's last run ends, when not by completing.
LAST_RUN_ENDS = {"cancel_request": "canceled"}
GZIP_ABOVE = 1_000_000  # characters of JSON
CONCURRENT_SIGNALS = 16
WAVE = 100  # signals a workflow task takes in at most (2 s deadlock detection under load)


def replayer() -> Replayer:
    """Checks determinism only: the 2 s deadlock detection is off (debug mode), as a recorded
    task of a hundred signals can take longer than that on a loaded 2-core machine."""
    return Replayer(
        workflows=[RolloutWorkflow], data_converter=pydantic_data_converter, debug_mode=True
    )


async def replay(history: WorkflowHistory) -> None:
    await replayer().replay_workflow(history)  # raises on non-determinism


def read_chains() -> dict[str, list[tuple[int, str]]]:
    """Recorded runs by scenario, in run order: (run number, history JSON)."""
    chains: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for file in HISTORIES.iterdir():
        match = FILE_NAME.fullmatch(file.name)
        assert match, f"{file.name} does not follow the naming in this module's docstring"
        data = file.read_bytes()
        text = gzip.decompress(data).decode() if file.suffix == ".gz" else data.decode()
        chains[match["scenario"]].append((int(match["run"] or 1), text))
    return {scenario: sorted(runs) for scenario, runs in chains.items()}


async def test_every_run_of_every_recorded_chain_replays() -> None:
    chains = read_chains()
    assert set(chains) == SCENARIOS, "recorded histories are missing or unexpected"
    replaying = replayer()
    for scenario, runs in chains.items():
        assert [n for n, _ in runs] == list(range(1, len(runs) + 1)), (
            f"{scenario}: a run is missing"
        )
        for number, text in runs:
            history = WorkflowHistory.from_json(rollout_workflow_id(scenario), text)
            last = history.events[-1]
            last_end = LAST_RUN_ENDS.get(scenario, "completed")
            ends = "continued_as_new" if number < len(runs) else last_end
            assert last.HasField(f"workflow_execution_{ends}_event_attributes"), (
                f"{scenario} run {number} does not end {ends}: the chain is cut"
            )
            await replaying.replay_workflow(history)


async def keep(client: Client, spec: RolloutSpec, name: str) -> list[WorkflowHistory]:
    """Replay every run just made; write them to tests/histories when re-recording."""
    chain = await fetch_chain(client, rollout_workflow_id(spec.id))
    for history in chain:
        await replay(history)
    if RECORDING:
        for stale in HISTORIES.glob(f"{name}.*"):
            if (match := FILE_NAME.fullmatch(stale.name)) and match["scenario"] == name:
                stale.unlink()
        for number, history in enumerate(chain, start=1):
            stem = name if len(chain) == 1 else f"{name}.{number}"
            text = history.to_json()
            if len(text) > GZIP_ABOVE:
                (HISTORIES / f"{stem}.json.gz").write_bytes(gzip.compress(text.encode(), mtime=0))
            else:
                (HISTORIES / f"{stem}.json").write_text(text)
    return chain


def carried_state(run: WorkflowHistory) -> RolloutState:
    """The state a continued run started from."""
    started = run.events[0].workflow_execution_started_event_attributes
    (input,) = pydantic_data_converter.payload_converter.from_payloads(
        started.input.payloads, [RolloutInput]
    )
    assert input.state is not None, "this run did not continue another"
    return input.state


def shape(run: WorkflowHistory) -> tuple[int, int]:
    """(signals, events) of a run, for the figures printed."""
    signals = sum(e.HasField("workflow_execution_signaled_event_attributes") for e in run.events)
    return signals, len(run.events)


async def job_settles(client: Client, spec: RolloutSpec, job_id: str, status: str) -> JobState:
    """The job as the workflow holds it, once it has taken in the report giving it `status`."""

    async def probe() -> JobState | None:
        job = next(j for j in (await view(client, spec)).jobs if j.id == job_id)
        return job if job.status == status else None

    return await eventually(probe)


async def reaches(client: Client, spec: RolloutSpec, status: str) -> None:
    """The live view shows `status`. A query may time out while the run continues as new
    with thousands of events behind it: the probe then simply asks again."""

    async def probe() -> bool:
        try:
            return (await view(client, spec)).status == status
        except rollout_client.RolloutUnavailable:
            return False

    await eventually(probe, timeout=120, interval=0.2)


async def spend_signals_until_continued(client: Client, spec: RolloutSpec, job: JobState) -> None:
    """Send signals that leave the rollout where it is until its run continues as new.

    Each wave is a pause signal, repeats of the report the workflow last took for `job`
    (reports are idempotent: they change nothing and wake nothing, but count against the run's
    signal budget and grow its history), then a resume signal. The resume showing in the view
    says the wave was taken in (a workflow task of thousands of signals would exceed the SDK's
    2 s deadlock detection); it wakes the run, which continues as new mid-batch once its
    signal budget is spent or its history reaches HISTORY_EVENT_BUDGET, whichever comes first
    (the server's earlier suggestion waits for a batch boundary). Being paused during the wave
    keeps a bake from ending meanwhile.
    """
    repeat = JobReportSignal(
        job_id=job.id, instance_id=job.instance_id, status=job.status, step=job.step
    )  # type: ignore[arg-type]
    handle = client.get_workflow_handle(rollout_workflow_id(spec.id))
    first_run = (await handle.describe()).run_id
    before = (await view(client, spec)).status
    limit = asyncio.Semaphore(CONCURRENT_SIGNALS)

    async def send() -> None:
        async with limit:
            # The run may be closing to continue as new: a repeat more or less is moot.
            with contextlib.suppress(rollout_client.RolloutUnavailable):
                await rollout_client.report_job(client, spec.id, repeat, timeout=60)

    for _ in range(SIGNAL_BUDGET // WAVE + 1):  # the last wave takes the run past its budget
        await handle.signal(RolloutWorkflow.pause_signal)
        await reaches(client, spec, "paused")
        await asyncio.gather(*(send() for _ in range(WAVE - 2)))
        await handle.signal(RolloutWorkflow.resume_signal)
        await reaches(client, spec, before)
        if (await handle.describe()).run_id != first_run:
            return
    raise AssertionError(f"the run took {SIGNAL_BUDGET} signals and did not continue as new")


async def test_lifecycle_run_replays(
    time_skipping_env: WorkflowEnvironment,
    ts_worker: Worker,
    ts_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    """Pause by signal and update, a failure pause, resume, retry, a timeout, advance, done."""
    client = time_skipping_env.client
    spec = await start(
        client, db, ts_settings, ["a", "b", "c"], batch_size=2, job_timeout_seconds=300
    )
    await client.get_workflow_handle(f"rollout-{spec.id}").signal("pause")
    await settles_to(client, spec, "paused")
    await act(client, spec, "resume")
    a, b = (await view(client, spec)).jobs
    await report(client, spec, a, "in_progress", "preflight")
    await report(client, spec, a, "rolled_back", "smoke")
    await settles_to(client, spec, "paused")
    await act(client, spec, "retry")
    retried = next(j for j in (await view(client, spec)).jobs if j.attempt == 2)
    await report(client, spec, retried, "succeeded")
    await report(client, spec, b, "in_progress", "pull")
    await skip_time(time_skipping_env, 301)  # b times out; failures were accepted by the retry
    await settles_to(client, spec, "paused")
    await act(client, spec, "resume")
    await settles_to(client, spec, "awaiting_advance")
    await act(client, spec, "advance")
    (c,) = (await view(client, spec)).jobs
    await act(client, spec, "pause", "change freeze")
    await report(client, spec, c, "succeeded")
    await act(client, spec, "resume")
    assert (await outcome(client, spec)).status == "completed"
    await keep(client, spec, "lifecycle")


async def test_abort_run_replays(
    time_skipping_env: WorkflowEnvironment,
    ts_worker: Worker,
    ts_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    client = time_skipping_env.client
    spec = await start(client, db, ts_settings, ["a", "b", "c"], batch_size=3, auto_advance=True)
    a, _, _ = (await view(client, spec)).jobs
    await report(client, spec, a, "in_progress", "pull")
    await act(client, spec, "abort", "bad build")
    await report(client, spec, a, "failed", "migrate")
    assert (await outcome(client, spec)).counts == {"failed": 1, "cancelled": 2}
    await keep(client, spec, "abort")


async def test_auto_revert_run_replays(
    time_skipping_env: WorkflowEnvironment,
    ts_worker: Worker,
    ts_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    """An abort with autoRevert: the revert's rows stored by an activity, the revert started as
    a child workflow that outlives the run."""
    client = time_skipping_env.client
    await seed_release(db, ts_settings, version="1.3.0")  # what the hosts ran before
    spec = await start(
        client,
        db,
        ts_settings,
        ["a", "b"],
        batch_size=2,
        auto_revert=True,
        auto_revert_restore="not_needed",
    )
    a, _ = (await view(client, spec)).jobs
    await report(client, spec, a, "succeeded")
    await db.execute("UPDATE instances SET accepts_downgrade = true")  # takes a revert job
    await act(client, spec, "abort", "error rate up")
    assert (await outcome(client, spec)).status == "aborted"
    (run,) = await keep(client, spec, "auto_revert")
    children = [
        e.start_child_workflow_execution_initiated_event_attributes.workflow_id
        for e in run.events
        if e.HasField("start_child_workflow_execution_initiated_event_attributes")
    ]
    revert_id = await db.fetchval("SELECT reverted_by FROM rollouts WHERE id = $1", spec.id)
    assert children == [rollout_workflow_id(revert_id)]


@pytest.mark.skipif(
    not RECORDING,
    reason="records the chain (~3,500 signals, minutes on 2 cores); the replay-all test"
    " replays the recorded chain in every run",
)
@pytest.mark.timeout(1500)  # thousands of signals; only when re-recording
async def test_continue_as_new_mid_batch_replays(
    dev_env: WorkflowEnvironment,
    dev_worker: Worker,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    """A run that continues as new with jobs still open carries them into the next run, where
    a failure pauses the rollout and a resume accepts it. On the dev server: on the
    time-skipping server the continuing task of a 4,000-event run kept timing out here."""
    client = dev_env.client
    spec = await start(client, db, dev_settings, ["a", "b", "c"], batch_size=3)
    a, b, c = (await view(client, spec)).jobs
    await report(client, spec, a, "in_progress", "pull")
    a = await job_settles(client, spec, a.id, "in_progress")
    await spend_signals_until_continued(client, spec, a)
    await report(client, spec, a, "succeeded")
    await report(client, spec, b, "rolled_back", "smoke")
    await settles_to(client, spec, "paused")
    await act(client, spec, "resume")
    await report(client, spec, c, "succeeded")
    result = await outcome(client, spec)
    assert (result.status, result.counts) == ("completed", {"succeeded": 2, "rolled_back": 1})
    first, *rest = await keep(client, spec, "continue_mid_batch")
    assert rest, "the run never continued as new"
    print("continue_mid_batch runs (signals, events):", [shape(run) for run in [first, *rest]])
    carried = carried_state(rest[0])
    # The wave in flight when the run continued may have left it paused (as at the boundary).
    assert carried.status in ("running", "paused")
    assert {
        j.instance_id
        for j in carried.carried_jobs.unpack()
        if j.status in ("pending", "in_progress")
    } == {
        "a",
        "b",
        "c",
    }


@pytest.mark.skipif(
    not RECORDING,
    reason="records the chain (~3,500 signals, minutes on 2 cores); the replay-all test"
    " replays the recorded chain in every run",
)
@pytest.mark.timeout(1500)  # thousands of signals; only when re-recording
async def test_continue_as_new_at_batch_boundary_replays(
    dev_env: WorkflowEnvironment,
    dev_worker: Worker,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    """A run that continues as new between batches (awaiting advance, no open job) carries
    the finished batch into the next run, where an advance releases the next one."""
    client = dev_env.client
    spec = await start(client, db, dev_settings, ["a", "b", "c"], batch_size=2)
    a, b = (await view(client, spec)).jobs
    await report(client, spec, a, "succeeded")
    await report(client, spec, b, "succeeded")
    await settles_to(client, spec, "awaiting_advance")
    a = await job_settles(client, spec, a.id, "succeeded")
    await spend_signals_until_continued(client, spec, a)
    await act(client, spec, "advance")
    (c,) = [j for j in (await view(client, spec)).jobs if j.instance_id == "c"]
    await report(client, spec, c, "succeeded")
    result = await outcome(client, spec)
    assert (result.status, result.counts) == ("completed", {"succeeded": 3})
    first, *rest = await keep(client, spec, "continue_at_boundary")
    assert rest, "the run never continued as new"
    print("continue_at_boundary runs (signals, events):", [shape(run) for run in [first, *rest]])
    carried = carried_state(rest[0])
    # Between batches: the wave in flight when the run continued may have left it paused.
    assert carried.current_batch == 1
    assert [j.status for j in carried.carried_jobs.unpack()] == ["succeeded", "succeeded"]


async def test_timeout_retry_abort_while_paused_replays(
    time_skipping_env: WorkflowEnvironment,
    ts_worker: Worker,
    ts_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    """A timed-out job (and an unreachable one) pause the rollout, a retry runs them again, a
    rollback pauses it again and an abort while paused cancels what has not started."""
    client = time_skipping_env.client
    spec = await start(client, db, ts_settings, ["a", "b"], batch_size=2, job_timeout_seconds=300)
    a, _ = (await view(client, spec)).jobs
    await report(client, spec, a, "in_progress", "pull")
    await skip_time(time_skipping_env, 301)
    paused = await settles_to(client, spec, "paused")
    assert {j.instance_id: j.status for j in paused.jobs} == {"a": "timed_out", "b": "unreachable"}
    assert await act(client, spec, "retry") == "running"
    retried = {j.instance_id: j for j in (await view(client, spec)).jobs if j.attempt == 2}
    assert set(retried) == {"a", "b"}
    a2 = retried["a"]
    await report(client, spec, a2, "in_progress", "smoke")
    await report(client, spec, a2, "rolled_back", "smoke")
    await settles_to(client, spec, "paused")
    assert await act(client, spec, "abort", "bad build") == "aborted"
    result = await outcome(client, spec)
    assert (result.status, result.counts) == ("aborted", {"rolled_back": 1, "cancelled": 1})
    await keep(client, spec, "timeout_retry_abort")


# --- the paths that keep a rollout from being wedged --------------------------------------------


async def test_poison_text_run_replays(
    time_skipping_env: WorkflowEnvironment,
    ts_worker: Worker,
    ts_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    """A NUL in a report's message and in a pause reason, signalled past the API."""
    client = time_skipping_env.client
    spec = await start(client, db, ts_settings, ["a", "b"], batch_size=2, max_failures=5)
    a, _ = (await view(client, spec)).jobs
    poison = JobReportSignal(
        job_id=a.id, instance_id="a", status="failed", step="migrate", message="boom\x00"
    )
    await rollout_client.report_job(client, spec.id, poison, timeout=15)
    handle = client.get_workflow_handle(f"rollout-{spec.id}")
    await handle.signal("pause", PauseInput(actor="ops", reason="hold\x00"))
    await settles_to(client, spec, "paused")
    await act(client, spec, "abort", "give up")
    assert (await outcome(client, spec)).counts == {"failed": 1, "cancelled": 1}
    await keep(client, spec, "poison_text")


async def test_abort_before_first_batch_run_replays(
    time_skipping_env: WorkflowEnvironment,
    ts_worker: Worker,
    ts_settings: ApiSettings,
    worker_pool: asyncpg.Pool,
    db: asyncpg.Connection,
) -> None:
    """Aborted while its targets load (the instances table is locked meanwhile)."""
    client = time_skipping_env.client
    await seed_instances(db, ["a", "b"])
    async with worker_pool.acquire() as locker, locker.transaction():
        await locker.execute("LOCK TABLE instances IN ACCESS EXCLUSIVE MODE")
        starting = asyncio.create_task(start(client, db, ts_settings, []))
        workflow_id = await eventually(lambda: loading_targets(client, worker_pool))
        spec_id = workflow_id.removeprefix("rollout-")
        await rollout_client.run_action(
            client, spec_id, "abort", AbortInput(actor="tester", reason="wrong"), timeout=15
        )
        spec = await starting
    result = await outcome(client, spec)
    assert (result.status, result.counts) == ("aborted", {})
    live = await view(client, spec)
    assert (live.target_count, live.current_batch) == (2, 0)  # loaded, and not released
    await keep(client, spec, "abort_before_first_batch")


async def test_cancel_request_run_replays(
    dev_env: WorkflowEnvironment,
    dev_worker: Worker,
    dev_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    """On the dev server: under load the time-skipping server intermittently failed the
    activity cancellation a cancel request causes ("ACTIVITY_UNKNOWN")."""
    client = dev_env.client
    spec = await start(client, db, dev_settings, ["a", "b", "c"], batch_size=2)
    a, _ = (await view(client, spec)).jobs
    await report(client, spec, a, "in_progress", "pull")
    handle = client.get_workflow_handle(f"rollout-{spec.id}")
    await handle.cancel()
    with pytest.raises(WorkflowFailureError) as closed:
        await handle.result()
    assert is_cancelled_exception(closed.value.cause)
    await keep(client, spec, "cancel_request")


async def loading_targets(client: Client, pool: asyncpg.Pool) -> str | None:
    """The workflow id of the test's rollout once it waits for its targets."""
    workflow_id = await pool.fetchval("SELECT workflow_id FROM rollouts")
    if workflow_id is None:
        return None
    try:
        described = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None  # the row is written just before the workflow starts
        raise
    pending = [p.activity_type.name for p in described.raw_description.pending_activities]
    return workflow_id if pending == ["snapshot_targets"] else None


# --- a job's step comes from the acknowledged reports -------------------------------------------


async def test_timed_out_at_reported_step_replays(
    time_skipping_env: WorkflowEnvironment,
    ts_worker: Worker,
    ts_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    """A job times out after its agent reported a step the workflow never heard of: the
    workflow asks the read model where the job stopped, for its pause reason."""
    client = time_skipping_env.client
    spec = await start(client, db, ts_settings, ["a"], batch_size=1, job_timeout_seconds=300)
    (a,) = (await view(client, spec)).jobs
    await report(client, spec, a, "in_progress", "preflight")
    await db.execute("UPDATE update_jobs SET status = 'in_progress', step = 'pull'")
    await skip_time(time_skipping_env, 301)
    paused = await settles_to(client, spec, "paused")
    assert paused.paused_reason is not None and "a timed_out at pull" in paused.paused_reason
    assert (await jobs.get(db, a.id)).step == "pull"  # type: ignore[union-attr]
    assert await act(client, spec, "abort", "stuck host") == "aborted"
    assert (await outcome(client, spec)).counts == {"timed_out": 1}
    await keep(client, spec, "timed_out_at_reported_step")


# --- a host that never started its job is unreachable, not timed out ---------------------------


async def test_unreachable_run_replays(
    time_skipping_env: WorkflowEnvironment,
    ts_worker: Worker,
    ts_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    """A stalled job times out within maxFailures while a host that never started ends
    unreachable and pauses the rollout under maxUnreachable; a retry ends that pause, the host
    stays away, a resume accepts it and the rollout runs to its end."""
    client = time_skipping_env.client
    spec = await start(
        client,
        db,
        ts_settings,
        ["a", "b", "c"],
        batch_size=2,
        job_timeout_seconds=300,
        max_failures=1,
    )
    a, _ = (await view(client, spec)).jobs
    await report(client, spec, a, "in_progress", "pull")
    await skip_time(time_skipping_env, 301)
    paused = await settles_to(client, spec, "paused")
    assert paused.paused_reason == "1 host unreachable (max 0): b"
    assert {j.instance_id: j.status for j in paused.jobs} == {"a": "timed_out", "b": "unreachable"}
    assert await act(client, spec, "retry") == "running"
    await skip_time(time_skipping_env, 301)  # a's retry and b's both never start
    again = await settles_to(client, spec, "paused")
    assert again.paused_reason == "2 hosts unreachable (max 0): a, b"
    await act(client, spec, "resume")
    await settles_to(client, spec, "awaiting_advance")
    await act(client, spec, "advance")
    (c,) = (await view(client, spec)).jobs
    await report(client, spec, c, "succeeded")
    result = await outcome(client, spec)
    assert (result.status, result.counts) == ("completed", {"unreachable": 2, "succeeded": 1})
    await keep(client, spec, "unreachable")


# --- targets snapshotted in PostgreSQL; each batch read as a local activity when it starts ----


def local_activities(run: WorkflowHistory) -> Counter[str]:
    """Local activities a run recorded (as markers), by activity type."""
    payloads = pydantic_data_converter.payload_converter
    types: Counter[str] = Counter()
    for event in run.events:
        marker = event.marker_recorded_event_attributes
        if event.HasField("marker_recorded_event_attributes") and "data" in marker.details:
            (data,) = payloads.from_payloads(marker.details["data"].payloads, [dict])
            types[data["activity_type"]] += 1
    return types


async def test_batch_read_locally_run_replays(
    time_skipping_env: WorkflowEnvironment,
    ts_worker: Worker,
    ts_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    """Three batches, each read from the snapshot as a local activity when released, and a
    retry (which reads nothing); jobs are written by regular activities; the run carries no
    target list."""
    client = time_skipping_env.client
    spec = await start(client, db, ts_settings, ["e", "c", "a", "d", "b"], batch_size=2)
    released: list[list[str]] = []
    for number in (1, 2, 3):
        batch = (await view(client, spec)).jobs
        released.append(sorted(job.instance_id for job in batch))
        if number == 1:
            await report(client, spec, batch[0], "rolled_back", "smoke")
            await settles_to(client, spec, "paused")
            await act(client, spec, "retry")
            batch = [j for j in (await view(client, spec)).jobs if j.status == "pending"]
        for job in batch:
            await report(client, spec, job, "succeeded")
        if number < 3:
            await settles_to(client, spec, "awaiting_advance")
            await act(client, spec, "advance")
    assert released == [["a", "b"], ["c", "d"], ["e"]]
    assert (await outcome(client, spec)).counts == {"succeeded": 5}
    (run,) = await keep(client, spec, "batch_read_locally")
    scheduled = Counter(
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in run.events
        if e.HasField("activity_task_scheduled_event_attributes")
    )
    assert (scheduled["snapshot_targets"], scheduled["batch_targets"]) == (1, 0)
    assert local_activities(run) == {"batch_targets": 3}
    assert scheduled["record_progress"] > 0


async def test_answer_when_written_run_replays(
    time_skipping_env: WorkflowEnvironment,
    ts_worker: Worker,
    ts_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    """Every admin action is answered once the read model shows it: agents' polls are
    answered from the rows, so an answered pause or abort withholds jobs on every API process."""
    client = time_skipping_env.client
    spec = await start(client, db, ts_settings, ["a", "b", "c"], batch_size=1)

    async def stored() -> tuple[str, dict[str, str]]:
        """The rollout's status and its jobs' (by instance, latest attempt) in PostgreSQL."""
        rows = await db.fetch(
            "SELECT instance_id, status FROM update_jobs WHERE rollout_id = $1"
            " ORDER BY batch, attempt",
            spec.id,
        )
        status = await db.fetchval("SELECT status FROM rollouts WHERE id = $1", spec.id)
        return status, {r["instance_id"]: r["status"] for r in rows}

    (a,) = (await view(client, spec)).jobs
    assert await act(client, spec, "pause", "change freeze") == "paused"
    assert await stored() == ("paused", {"a": "pending"})
    assert await act(client, spec, "resume") == "running"
    assert (await stored())[0] == "running"
    await report(client, spec, a, "rolled_back", "smoke")
    await settles_to(client, spec, "paused")
    assert await act(client, spec, "retry") == "running"
    assert await stored() == ("running", {"a": "pending"})  # the new attempt's row
    (retried,) = [j for j in (await view(client, spec)).jobs if j.status == "pending"]
    await report(client, spec, retried, "succeeded")
    await settles_to(client, spec, "awaiting_advance")
    assert await act(client, spec, "advance") == "running"
    assert await stored() == ("running", {"a": "succeeded", "b": "pending"})
    assert await act(client, spec, "abort", "bad build") == "aborted"
    assert await stored() == ("aborted", {"a": "succeeded", "b": "cancelled"})
    assert (await outcome(client, spec)).counts == {"succeeded": 1, "cancelled": 1}
    await keep(client, spec, "answer_when_written")


SIGNALED: Final = "workflow_execution_signaled_event_attributes"
TASK_COMPLETED: Final = "workflow_task_completed_event_attributes"


class HeldReleaseWrite(RolloutActivities):
    """Writes as usual, but the first release's write, once committed, is not reported done
    until the test says so: its rows are in PostgreSQL (polls hand its jobs out) while the
    workflow still waits on the write, as when a workflow task fails or waits in between."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.committed = asyncio.Event()
        self.go_on = asyncio.Event()

    @activity.defn(name="record_progress")
    async def record_progress(self, input: RecordProgressInput) -> RecordProgressResult:
        result = await super().record_progress(input)
        if input.jobs and not self.committed.is_set():
            self.committed.set()
            await self.go_on.wait()
        return result


async def test_report_while_written_run_replays(
    time_skipping_env: WorkflowEnvironment,
    ts_settings: ApiSettings,
    worker_pool: asyncpg.Pool,
    db: asyncpg.Connection,
) -> None:
    """A job whose agent starts and finishes it before the workflow has seen its release's
    write end is not lost: it settles, and the rollout completes."""
    client = time_skipping_env.client
    activities = HeldReleaseWrite(worker_pool)
    async with build_worker(client, ts_settings, activities):
        starting = asyncio.create_task(start(client, db, ts_settings, ["a"], batch_size=1))
        await asyncio.wait_for(activities.committed.wait(), TIMEOUT)
        (row,) = await jobs.for_rollout(db, await db.fetchval("SELECT id FROM rollouts"))
        for status in ("in_progress", "succeeded"):
            signal = JobReportSignal(job_id=row.id, instance_id="a", status=status, step="health")
            await rollout_client.report_job(client, row.rollout_id, signal, timeout=TIMEOUT)
        handle = client.get_workflow_handle(rollout_workflow_id(row.rollout_id))

        async def reports_taken_in() -> bool:
            """A workflow task ended after the last report arrived: the write is still held."""
            events = (await handle.fetch_history()).events
            last = max(n for n, e in enumerate(events) if e.HasField(SIGNALED))
            return any(e.HasField(TASK_COMPLETED) for e in events[last + 1 :])

        await eventually(reports_taken_in)
        activities.go_on.set()
        spec = await starting
        result = await outcome(client, spec)
        assert (result.status, result.counts) == ("completed", {"succeeded": 1})
        await keep(client, spec, "report_while_written")


async def test_reports_in_one_signal_run_replays(
    time_skipping_env: WorkflowEnvironment,
    ts_worker: Worker,
    ts_settings: ApiSettings,
    db: asyncpg.Connection,
) -> None:
    """Reports that reach an API process together arrive as one `job_report_batch` signal, taken in
    order: starts, ends, and a repeat that changes nothing."""
    client = time_skipping_env.client
    spec = await start(client, db, ts_settings, ["a", "b", "c"], batch_size=3)
    a, b, c = (await view(client, spec)).jobs

    def signal(job: JobState, status: str) -> JobReportSignal:
        return JobReportSignal(job_id=job.id, instance_id=job.instance_id, status=status)  # type: ignore[arg-type]

    together = [
        signal(a, "in_progress"),
        signal(b, "in_progress"),
        signal(a, "succeeded"),
        signal(b, "succeeded"),
        signal(a, "succeeded"),
    ]
    await rollout_client.report_jobs(client, spec.id, together, timeout=TIMEOUT)
    await rollout_client.report_jobs(client, spec.id, [signal(c, "succeeded")], timeout=TIMEOUT)
    result = await outcome(client, spec)
    assert (result.status, result.counts) == ("completed", {"succeeded": 3})
    await keep(client, spec, "reports_in_one_signal")
