"""`rollout simulate`: a fleet of real agents with simulated steps against a running control plane.

Live lines go to stderr, the final figures to stdout (`--json` for a document).
"""

import argparse
import asyncio
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

from cli.admin_http import DEFAULT_URL
from cli.errors import fail
from contract.manifest import parse_version
from contract.wire import INSTANCE_ID_PATTERN
from runtime.logs import configure_logging
from simulator import secrets_file
from simulator.figures import Figures, render
from simulator.fleet import SimulationError, simulate
from simulator.options import SIMULATED_STEPS, SimulationOptions

COMMAND = "rollout simulate"


def _positive(kind: type) -> Any:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, got {text!r}")
        return value

    return parse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="run N simulated agents (real agent code, simulated steps) against a control plane",
        description="Each agent polls and reports with the real signed protocol; steps only wait"
        " and fail at the given rates. Secrets: AGENT_SECRET or CONTROL_PLANE_AGENT_TOKEN for"
        " every agent, or --secrets-file. CONTROL_PLANE_ADMIN_TOKEN lets it read rollouts.",
    )
    p.add_argument("--agents", type=_positive(int), required=True, help="how many agents")
    p.add_argument("--url", default=os.environ.get("CONTROL_PLANE_URL", DEFAULT_URL))
    p.add_argument("--prefix", default="sim", help="instance ids are <prefix>-001, ...")
    p.add_argument("--channel", default="stable", choices=["stable", "beta"])
    p.add_argument("--version", default="1.0.0", help="the agents' starting version")
    p.add_argument("--step-seconds", type=_positive(float), default=0.2, help="mean step time")
    p.add_argument(
        "--step-seconds-for",
        action="append",
        default=[],
        metavar="STEP=SECONDS",
        help="mean time of one step (repeatable)",
    )
    p.add_argument(
        "--fail-rate",
        action="append",
        default=[],
        metavar="STEP=RATE",
        help="chance from 0 to 1 that a step fails (repeatable; rollback and health too)",
    )
    p.add_argument("--poll-interval", type=_positive(float), default=2.0, help="seconds")
    p.add_argument("--seed", type=int, help="makes failures reproducible")
    p.add_argument(
        "--processes",
        type=_positive(int),
        help="simulator processes, each its own event loop"
        " (default: one per 200 agents, at most one per core)",
    )
    stopping = p.add_argument_group("stopping (default: Ctrl-C)")
    stopping.add_argument("--duration", type=_positive(float), help="seconds")
    stopping.add_argument("--until-rollout", metavar="ID", help="until it completes or pauses")
    stopping.add_argument(
        "--until-idle", action="store_true", help="once jobs ran and none came for --idle-seconds"
    )
    stopping.add_argument("--idle-seconds", type=_positive(float), default=5.0)
    stopping.add_argument(
        "--grace-seconds",
        type=_positive(float),
        default=30.0,
        help="time for jobs under way to finish when stopping",
    )
    p.add_argument("--rollout", metavar="ID", help="rollout to show live and measure per batch")
    p.add_argument("--secrets-file", type=Path, help='JSON {"<instanceId>": "<secret>"}')
    p.add_argument(
        "--emit-secrets",
        type=Path,
        metavar="FILE",
        help="write fresh per-agent secrets to FILE and exit",
    )
    p.add_argument("--json", action="store_true", help="print the final figures as JSON")
    p.add_argument("--verbose", action="store_true", help="log every agent's steps")
    p.set_defaults(func=run)


def _step_values(pairs: list[str], flag: str, *, at_most: float | None) -> dict[str, float]:
    values: dict[str, float] = {}
    for pair in pairs:
        step, _, text = pair.partition("=")
        if step not in SIMULATED_STEPS:
            fail(
                f"{COMMAND}: error: {flag} {pair!r}: step must be one of"
                f" {', '.join(SIMULATED_STEPS)}"
            )
        try:
            value = float(text)
        except ValueError:
            fail(f"{COMMAND}: error: {flag} {pair!r}: {text!r} is not a number")
        if value < 0 or (at_most is not None and value > at_most):
            limit = f"from 0 to {at_most:g}" if at_most is not None else "0 or more"
            fail(f"{COMMAND}: error: {flag} {pair!r}: must be {limit}")
        values[step] = value
    return values


def _options(args: argparse.Namespace) -> SimulationOptions:
    if not re.fullmatch(INSTANCE_ID_PATTERN, f"{args.prefix}-{args.agents}"):
        fail(f"{COMMAND}: error: --prefix {args.prefix!r}: instance ids allow A-Z a-z 0-9 . _ -")
    try:
        parse_version(args.version)
    except ValueError as exc:
        fail(f"{COMMAND}: error: --version: {exc}")
    secrets: dict[str, str] = {}
    if args.secrets_file is not None:
        try:
            secrets = secrets_file.load(args.secrets_file)
        except ValueError as exc:
            fail(f"{COMMAND}: error: --secrets-file: {exc}")
    admin_token = os.environ.get("CONTROL_PLANE_ADMIN_TOKEN") or None
    if args.rollout and not admin_token:
        fail(f"{COMMAND}: error: --rollout reads the rollout: set CONTROL_PLANE_ADMIN_TOKEN")
    return SimulationOptions(
        control_plane_url=args.url,
        agents=args.agents,
        default_secret=(
            os.environ.get("AGENT_SECRET") or os.environ.get("CONTROL_PLANE_AGENT_TOKEN") or None
        ),
        secrets=secrets,
        prefix=args.prefix,
        channel=args.channel,
        version=args.version,
        step_seconds=args.step_seconds,
        step_seconds_for=_step_values(args.step_seconds_for, "--step-seconds-for", at_most=None),
        fail_rates=_step_values(args.fail_rate, "--fail-rate", at_most=1.0),
        poll_interval=args.poll_interval,
        seed=args.seed,
        duration=args.duration,
        until_rollout=args.until_rollout,
        until_idle=args.until_idle,
        idle_seconds=args.idle_seconds,
        grace_seconds=args.grace_seconds,
        admin_token=admin_token,
        track_rollout=args.rollout,
        processes=args.processes,
    )


def _emit_secrets(args: argparse.Namespace) -> int:
    ids = SimulationOptions(control_plane_url=args.url, agents=args.agents, prefix=args.prefix)
    try:
        secrets_file.emit(args.emit_secrets, ids.instance_ids())
    except OSError as exc:
        fail(f"{COMMAND}: error: --emit-secrets {args.emit_secrets}: {exc.strerror}")
    print(f"wrote {args.agents} agent secrets to {args.emit_secrets} (mode 0600).")
    print("Start the API with them, then run the simulator with the same file:")
    print(f'  export CONTROL_PLANE_AGENT_SECRETS="$(cat {args.emit_secrets})"')
    print(f"  rollout simulate --agents {args.agents} --secrets-file {args.emit_secrets}")
    return 0


async def _simulate(options: SimulationOptions) -> Figures:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return await simulate(options, stop=stop)


def run(args: argparse.Namespace) -> int:
    if args.emit_secrets is not None:
        return _emit_secrets(args)
    options = _options(args)
    configure_logging(level=logging.WARNING)
    logging.getLogger("agent").setLevel(logging.INFO if args.verbose else logging.ERROR)
    try:
        figures = asyncio.run(_simulate(options))
    except SimulationError as exc:
        fail(f"{COMMAND}: error: {exc}")
    print(figures.model_dump_json(indent=2) if args.json else render(figures))
    sys.stdout.flush()
    return 0
