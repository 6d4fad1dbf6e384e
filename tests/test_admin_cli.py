"""The admin CLI against a live stack: what an operator types, what it prints, its exit codes."""

import asyncio
import json
import os
import signal
import sys

import httpx

from server.settings import ApiSettings
from tests.conftest import LiveServer
from tests.fixtures_agents import AgentFactory
from tests.fixtures_fleet import FLEET_TOKEN, registered


async def start_cli(
    plane: LiveServer,
    settings: ApiSettings,
    *args: str,
    token: str | None = None,
    stdout: int = asyncio.subprocess.PIPE,
) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROL_PLANE_")}
    env["CONTROL_PLANE_URL"] = plane.url
    env["CONTROL_PLANE_ADMIN_TOKEN"] = (
        settings.control_plane_admin_token.get_secret_value() if token is None else token
    )
    env["RELEASE_SIGNING_SECRET"] = settings.control_plane_release_signing_secret.get_secret_value()
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        *args,
        env=env,
        stdout=stdout,
        stderr=asyncio.subprocess.PIPE,
    )


async def cli_into_closed_pipe(
    plane: LiveServer, settings: ApiSettings, *args: str
) -> tuple[int, str]:
    """Run the CLI with stdout a pipe whose reader is gone; its exit status and stderr."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        process = await start_cli(plane, settings, *args, stdout=write_end)
    finally:
        os.close(write_end)
    _, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, err.decode()


async def rollout_cli(
    plane: LiveServer, settings: ApiSettings, *args: str, token: str | None = None
) -> tuple[int, str, str]:
    process = await start_cli(plane, settings, *args, token=token)
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_operator_flow_from_manifest_to_completed_rollout(
    plane: LiveServer,
    admin: httpx.AsyncClient,
    settings: ApiSettings,
    agent_host: AgentFactory,
    tmp_path,
) -> None:
    await agent_host(plane.url, FLEET_TOKEN, instance_id="app-1")
    # app-2 (batch 2) holds at migrate until the test has seen the watch draw a running view.
    held = await agent_host(plane.url, FLEET_TOKEN, instance_id="app-2", block_at="migrate")
    await registered(admin, 2)
    manifest = tmp_path / "manifest.json"
    code, _, err = await rollout_cli(
        plane,
        settings,
        "release-manifest",
        "--version",
        "2.1.0",
        "--sha",
        "abcdef0",
        "--channel",
        "stable",
        "--migrations-required",
        "false",
        "--out",
        str(manifest),
    )
    assert code == 0, err
    code, out, err = await rollout_cli(
        plane, settings, "releases", "upload", str(manifest), "--json"
    )
    assert code == 0, err
    release = json.loads(out)
    code, out, _ = await rollout_cli(plane, settings, "releases", "list")
    assert release["id"] in out and "2.1.0" in out

    code, out, err = await rollout_cli(
        plane,
        settings,
        "rollouts",
        "create",
        "--manifest",
        release["id"],
        "--channel",
        "stable",
        "--batch-size",
        "1",
        "--auto-advance",
        "--max-unreachable",
        "1",
        "--json",
    )
    assert code == 0, err
    rollout = json.loads(out)
    assert (rollout["maxFailures"], rollout["maxUnreachable"]) == (0, 1)

    watch = await start_cli(plane, settings, "rollouts", "watch", rollout["id"])
    assert watch.stdout is not None
    first_view = (await watch.stdout.readuntil(b"\n\n")).decode()
    assert "COMPLETED" not in first_view and "batch   2" in first_view
    await held.wait_for_step("migrate 2.1.0")
    # A second watch left with Ctrl-C, while the rollout still runs: no traceback, status 130.
    interrupted = await start_cli(plane, settings, "rollouts", "watch", rollout["id"])
    assert interrupted.stdout is not None
    await interrupted.stdout.readuntil(b"\n\n")
    interrupted.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(interrupted.communicate(), 60)
    assert (interrupted.returncode, err) == (130, b"")
    held.open_gate()
    rest, err = await asyncio.wait_for(watch.communicate(), 120)
    assert watch.returncode == 0, err
    views = [view for view in rest.decode().strip().split("\n\n") if view]
    assert "COMPLETED" in views[-1]
    final = views[-1].splitlines()
    assert [line.split()[:2] for line in final[1:3]] == [["batch", "1"], ["batch", "2"]]
    assert all("1/1 succeeded" in line for line in final[1:3])

    code, out, _ = await rollout_cli(
        plane, settings, "jobs", "list", "--rollout", rollout["id"], "--json"
    )
    assert sorted((j["instanceId"], j["status"]) for j in json.loads(out)) == [
        ("app-1", "succeeded"),
        ("app-2", "succeeded"),
    ]
    code, out, _ = await rollout_cli(plane, settings, "instances", "list")
    assert code == 0 and out.count("2.1.0") == 2
    # `rollout ... | head` where head already left: quiet, status 141 as a shell tool's SIGPIPE.
    code, err = await cli_into_closed_pipe(
        plane, settings, "jobs", "list", "--rollout", rollout["id"]
    )
    assert (code, err) == (141, "")

    for action in ("advance", "pause", "resume", "retry", "abort"):
        code, out, err = await rollout_cli(plane, settings, "rollouts", action, rollout["id"])
        assert code == 1, (action, out)
        assert f"rollout rollouts {action}: 409" in err and "completed" in err, err


async def test_cli_refusals_name_the_problem(plane: LiveServer, settings: ApiSettings) -> None:
    code, _, err = await rollout_cli(plane, settings, "rollouts", "get", "nope")
    assert code == 1 and "404" in err and "nope" in err
    code, _, err = await rollout_cli(
        plane, settings, "releases", "list", token="wrong-token-0123456789"
    )
    assert code == 1 and "401" in err and "invalid admin token" in err
    code, _, err = await rollout_cli(plane, settings, "instances", "list", token="")
    assert code == 2 and "CONTROL_PLANE_ADMIN_TOKEN is not set" in err
