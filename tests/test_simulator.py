"""The fleet simulator against the real API, worker, Temporal dev server and PostgreSQL: its agents
register by polling, take part in a real rollout, and the figures it prints match what happened."""

import asyncio
import io
import json
import os
import signal
import stat
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from api.app import create_app
from cli.main import main as cli_main
from devstack.ports import free_port
from server.settings import ApiSettings
from simulator import secrets_file
from simulator.figures import LAGGING_P50_MS, Figures, Latency, ProcessFigures, render
from simulator.fleet import SimulationError, simulate
from simulator.options import SimulationOptions
from tests.conftest import LiveServer
from tests.fixtures_fleet import FLEET_TOKEN
from tests.fixtures_temporal import eventually
from tests.manifests import hand_signed


def fleet_options(plane: LiveServer, settings: ApiSettings, **overrides: Any) -> SimulationOptions:
    values: dict[str, Any] = {
        "control_plane_url": plane.url,
        "agents": 50,
        "default_secret": FLEET_TOKEN,
        "version": "1.0.0",
        "step_seconds": 0.03,
        "poll_interval": 0.2,
        "seed": 7,
        "admin_token": settings.control_plane_admin_token.get_secret_value(),
        "summary_interval": 0.5,
        **overrides,
    }
    return SimulationOptions(**values)


async def registered(admin: httpx.AsyncClient, count: int) -> list[dict]:
    async def probe() -> list[dict] | None:
        fleet = (await admin.get("/api/instances")).json()
        return fleet if len(fleet) == count else None

    return await eventually(probe)


async def rollout_reaching(admin: httpx.AsyncClient, rollout_id: str, status: str) -> dict:
    """Polled gently: each GET queries the workflow, and the worker shares this event loop."""
    async with asyncio.timeout(180):
        while True:
            view = (await admin.get(f"/api/rollouts/{rollout_id}")).json()
            if view["status"] == status:
                return view
            await asyncio.sleep(0.5)


async def release_and_roll_out(
    admin: httpx.AsyncClient, settings: ApiSettings, **rollout: Any
) -> dict:
    secret = settings.control_plane_release_signing_secret.get_secret_value()
    uploaded = await admin.post("/api/releases", json=hand_signed(secret, version="1.4.0"))
    assert uploaded.status_code == 201, uploaded.text
    body = {"manifestId": uploaded.json()["id"], "channel": "stable", **rollout}
    created = await admin.post("/api/rollouts", json=body)
    assert created.status_code == 201, created.text
    return created.json()


async def test_fifty_simulated_agents_drive_a_rollout_to_completed(
    plane: LiveServer, admin: httpx.AsyncClient, settings: ApiSettings
) -> None:
    stop = asyncio.Event()
    live = io.StringIO()
    run = asyncio.create_task(simulate(fleet_options(plane, settings), stop=stop, out=live))
    fleet = await registered(admin, 50)
    assert {i["currentVersion"] for i in fleet} == {"1.0.0"}
    rollout = await release_and_roll_out(admin, settings, batchSize=20, autoAdvance=True)

    done = await rollout_reaching(admin, rollout["id"], "completed")

    async def fleet_on_new_version() -> bool:
        fleet = (await admin.get("/api/instances")).json()
        return Counter(i["currentVersion"] for i in fleet) == {"1.4.0": 50}

    await eventually(fleet_on_new_version)
    stop.set()
    figures = await asyncio.wait_for(run, 30)

    assert done["counts"] == {"succeeded": 50}
    assert figures.jobs == {"succeeded": 50}
    assert figures.agents_on_version == {"1.4.0": 50}
    # Busy moments may answer 503 ("retry later", PROTOCOL-conform); nothing else may fail.
    assert set(figures.request_errors) <= {"poll HTTP 503", "report HTTP 503"}
    assert figures.polls == figures.poll_latency.count > 50
    assert figures.polls_per_second > 0
    # preflight, five steps and health in progress, then succeeded: 8 reports per job.
    assert figures.report_latency.count == 50 * 8
    for measured in (figures.poll_latency, figures.report_latency):
        assert measured.p50_ms is not None and measured.p99_ms is not None
        assert 0 < measured.p50_ms <= measured.p99_ms
    assert figures.client_loop_lag.count > 10
    [measured_rollout] = figures.rollouts
    assert (measured_rollout.id, measured_rollout.status) == (rollout["id"], "completed")
    assert [(b.number, b.jobs, b.settled) for b in measured_rollout.batches] == [
        (1, 20, 20),
        (2, 20, 20),
        (3, 10, 10),
    ]
    batch_walls = [b.wall_seconds for b in measured_rollout.batches]
    assert all(wall is not None and wall > 0 for wall in batch_walls)
    assert measured_rollout.wall_seconds is not None
    assert sum(w for w in batch_walls if w) <= measured_rollout.wall_seconds
    lines = live.getvalue().splitlines()
    assert any("polls/s" in line and f"rollout {rollout['id']}" in line for line in lines)
    assert lines[-1].startswith("stopping: stopped")


# A preview's prediction against the simulated fleet's measured time: within this factor either
# way (the machine's load moves both runs alike; the prediction is a planning figure, not a
# promise).
PREDICTION_FACTOR = 2.0


async def test_a_previews_prediction_is_near_the_time_the_rollout_then_takes(
    plane: LiveServer, admin: httpx.AsyncClient, settings: ApiSettings
) -> None:
    stop = asyncio.Event()
    options = fleet_options(plane, settings, agents=30, step_seconds=0.3)
    run = asyncio.create_task(simulate(options, stop=stop, out=io.StringIO()))
    await registered(admin, 30)
    first = await release_and_roll_out(admin, settings, batchSize=10, autoAdvance=True)
    await rollout_reaching(admin, first["id"], "completed")  # the history it learns from

    secret = settings.control_plane_release_signing_secret.get_secret_value()
    uploaded = await admin.post("/api/releases", json=hand_signed(secret, version="1.5.0"))
    assert uploaded.status_code == 201, uploaded.text
    body = {"manifestId": uploaded.json()["id"], "channel": "stable", "batchSize": 10}
    body |= {"autoAdvance": True}
    preview = (await admin.post("/api/rollouts/preview", json=body)).json()
    assert preview["targetCount"] == 30
    assert "the 90th percentile of the last 30 jobs" in preview["prediction"]["assumptions"][0]
    predicted = preview["prediction"]["seconds"]
    began = asyncio.get_running_loop().time()
    created = await admin.post("/api/rollouts", json={**body, "previewId": preview["previewId"]})
    assert created.status_code == 201, created.text
    await rollout_reaching(admin, created.json()["id"], "completed")
    measured = asyncio.get_running_loop().time() - began
    print(f"preview predicted {predicted:.1f} s; the rollout took {measured:.1f} s")
    stop.set()
    await asyncio.wait_for(run, 60)
    assert predicted / PREDICTION_FACTOR <= measured <= predicted * PREDICTION_FACTOR, (
        predicted,
        measured,
    )


async def test_agents_spread_over_processes_add_up_to_one_fleet(
    plane: LiveServer, admin: httpx.AsyncClient, settings: ApiSettings
) -> None:
    stop = asyncio.Event()
    live = io.StringIO()
    options = fleet_options(plane, settings, agents=21, processes=2)
    run = asyncio.create_task(simulate(options, stop=stop, out=live))
    fleet = await registered(admin, 21)
    assert sorted(i["instanceId"] for i in fleet) == options.instance_ids()
    before = datetime.now(UTC)
    rollout = await release_and_roll_out(admin, settings, batchSize=10, autoAdvance=True)

    done = await rollout_reaching(admin, rollout["id"], "completed")
    stop.set()
    figures = await asyncio.wait_for(run, 30)

    assert done["counts"] == {"succeeded": 21}
    # Each process's own figures, and the fleet's made of them: no agent counted twice or lost.
    assert [p.agents for p in figures.processes] == [10, 11]
    assert all(p.polls > 0 and p.loop_lag.count > 0 for p in figures.processes)
    assert figures.polls == sum(p.polls for p in figures.processes)
    assert figures.client_loop_lag.count == sum(p.loop_lag.count for p in figures.processes)
    assert figures.jobs == {"succeeded": 21}
    assert figures.agents_on_version == {"1.4.0": 21}
    assert figures.report_latency.count == 21 * 8
    assert figures.lagging == any(p.lagging for p in figures.processes)
    [measured_rollout] = figures.rollouts
    assert [(b.number, b.jobs, b.settled) for b in measured_rollout.batches] == [
        (1, 10, 10),
        (2, 10, 10),
        (3, 1, 1),
    ]
    handouts = [b.first_handout_at for b in measured_rollout.batches]
    assert all(at is not None and at > before for at in handouts)
    assert handouts == sorted(handouts)
    lines = live.getvalue().splitlines()
    assert any("loop lag p50" in line and "polls/s" in line for line in lines)


def test_a_lagging_simulator_is_flagged_in_the_printed_figures() -> None:
    def process(lag_ms: float) -> ProcessFigures:
        return ProcessFigures(
            agents=100, polls=500, loop_lag=Latency(count=50, p50_ms=lag_ms, p99_ms=lag_ms * 3)
        )

    def figures(*lags_ms: float) -> Figures:
        processes = [process(lag) for lag in lags_ms]
        return Figures(
            agents=100 * len(processes),
            seconds=10.0,
            polls=500 * len(processes),
            polls_per_second=50.0 * len(processes),
            poll_latency=Latency(count=1000, p50_ms=3.0, p99_ms=9.0),
            report_latency=Latency(count=0, p50_ms=None, p99_ms=None),
            client_loop_lag=Latency(count=100, p50_ms=max(lags_ms), p99_ms=max(lags_ms) * 3),
            processes=processes,
            lagging=any(p.lagging for p in processes),
            request_errors={},
            jobs={},
            agents_on_version={"1.0.0": 100 * len(processes)},
            rollouts=[],
        )

    keeping_up, lagging = figures(1.5, 4.0), figures(1.5, LAGGING_P50_MS + 5)
    assert not keeping_up.lagging and "LAGGING" not in render(keeping_up)
    printed = render(lagging).splitlines()
    assert lagging.lagging
    assert [line for line in printed if line.endswith("LAGGING")] == [
        "  process 2: 100 agents, 500 polls, lag p50 25.0 ms p99 75.0 ms  LAGGING"
    ]
    assert any(line.startswith("SIMULATOR LAGGING") for line in printed)


async def test_failing_smoke_rolls_back_and_the_rollout_pauses_itself(
    plane: LiveServer, admin: httpx.AsyncClient, settings: ApiSettings
) -> None:
    options = fleet_options(
        plane, settings, agents=10, fail_rates={"smoke": 1.0}, until_idle=True, idle_seconds=1.5
    )
    live = io.StringIO()
    run = asyncio.create_task(simulate(options, out=live))
    await registered(admin, 10)
    rollout = await release_and_roll_out(admin, settings, batchSize=5, autoAdvance=True)
    figures = await asyncio.wait_for(run, 180)

    assert "stopping: no job for 1.5 s" in live.getvalue()
    view = (await admin.get(f"/api/rollouts/{rollout['id']}")).json()
    assert view["status"] == "paused" and view["pausedReason"]
    jobs = (await admin.get("/api/updates/jobs", params={"rolloutId": rollout["id"]})).json()
    # The first rollback pauses the rollout: jobs not yet started are withheld (still pending).
    rolled_back = [j for j in jobs if j["status"] == "rolled_back"]
    assert rolled_back and {j["step"] for j in rolled_back} == {"smoke"}
    assert {j["status"] for j in jobs} <= {"rolled_back", "pending"}
    assert {j["batch"] for j in jobs} == {1}
    assert figures.jobs == {"rolled_back": len(rolled_back)}
    assert figures.agents_on_version == {"1.0.0": 10}
    [measured_rollout] = figures.rollouts
    assert measured_rollout.status == "paused" and measured_rollout.wall_seconds is None


async def test_emitted_per_agent_secrets_are_the_only_ones_accepted(
    settings: ApiSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "agents.json"
    emitted = ["simulate", "--agents", "3", "--prefix", "edge", "--emit-secrets", str(path)]
    assert cli_main(emitted) == 0
    assert "CONTROL_PLANE_AGENT_SECRETS" in capsys.readouterr().out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    issued = secrets_file.load(path)
    assert sorted(issued) == ["edge-001", "edge-002", "edge-003"]
    assert len(set(issued.values())) == 3

    configured = settings.model_copy(
        update={"control_plane_agent_secrets": {k: SecretStr(v) for k, v in issued.items()}}
    )
    # edge-003 is given another agent's secret: the API refuses it and the figures say so.
    swapped = {**issued, "edge-003": issued["edge-001"]}
    async with LiveServer(create_app(configured), free_port()) as server:
        options = SimulationOptions(
            control_plane_url=server.url,
            agents=3,
            prefix="edge",
            secrets=swapped,
            poll_interval=0.2,
            duration=3.0,  # a loaded machine may need more than one poll interval
            summary_interval=0.25,
        )
        figures = await simulate(options, out=io.StringIO())
    assert set(figures.request_errors) == {"poll HTTP 401"}
    assert figures.polls > figures.request_errors["poll HTTP 401"]
    assert figures.rollouts == []


@pytest.mark.parametrize("processes", [1, 2])
async def test_the_command_stops_on_ctrl_c_and_prints_the_figures(
    settings: ApiSettings, processes: int
) -> None:
    """With two processes, Ctrl-C reaches only the command; it stops its simulator processes."""
    configured = settings.model_copy(update={"control_plane_agent_token": SecretStr(FLEET_TOKEN)})
    async with LiveServer(create_app(configured), free_port()) as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROL_PLANE_")}
        command = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "cli.main", "simulate", "--agents", "3", "--json"],
            *["--url", server.url, "--poll-interval", "0.2", "--processes", str(processes)],
            env={**env, "AGENT_SECRET": FLEET_TOKEN},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert command.stderr is not None
        # Simulator processes take a moment to start: Ctrl-C once every agent has polled.
        async with asyncio.timeout(60):
            line = (await command.stderr.readline()).decode()
            assert "agents:" in line and "polls/s" in line
            while "3 polling" not in line:
                line = (await command.stderr.readline()).decode()
                assert line, "the command ended before its agents polled"
        command.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            out, err = await command.communicate()
    assert command.returncode == 0, err.decode()
    assert "stopping: stopped" in err.decode()
    assert FLEET_TOKEN not in out.decode() + err.decode()
    figures = json.loads(out)
    assert figures["agents"] == 3 and figures["polls"] >= 3
    assert figures["request_errors"] == {} and figures["jobs"] == {}
    assert figures["agents_on_version"] == {"1.0.0": 3}
    assert sorted(p["agents"] for p in figures["processes"]) == ([3] if processes == 1 else [1, 2])
    assert sum(p["polls"] for p in figures["processes"]) == figures["polls"]


async def test_a_run_without_secrets_is_refused_before_any_request() -> None:
    options = SimulationOptions(control_plane_url="http://127.0.0.1:9", agents=2)
    with pytest.raises(SimulationError, match="no secret for sim-001 and 1 more"):
        await simulate(options, out=io.StringIO())


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--fail-rate", "smoke=2"], "--fail-rate 'smoke=2': must be from 0 to 1"),
        (["--fail-rate", "deploy=0.1"], "step must be one of backup, pull"),
        (["--step-seconds-for", "migrate=x"], "'x' is not a number"),
        (["--version", "one"], "--version"),
        (["--prefix", "bad prefix"], "--prefix 'bad prefix'"),
        (["--rollout", "r1"], "set CONTROL_PLANE_ADMIN_TOKEN"),
    ],
)
def test_bad_flags_exit_2_with_one_line(
    flags: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CONTROL_PLANE_ADMIN_TOKEN", raising=False)
    with pytest.raises(SystemExit) as exited:
        cli_main(["simulate", "--agents", "2", *flags])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and message in error


def test_secrets_file_must_map_instance_ids_to_secrets(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps(["sim-001"]))
    with pytest.raises(ValueError, match="must hold a JSON object"):
        secrets_file.load(path)
