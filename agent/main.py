"""Process entry point of the agent (`rollout agent`, `python -m agent`): config from the env,
SIGTERM/SIGINT stop it cleanly. Exit 0 after a clean stop, 2 for bad configuration or an
unusable state directory, 3 when another agent already runs on the same state directory."""

import asyncio
import contextlib
import logging
import os
import signal
import sys

from agent.config import AgentConfig, ConfigError, load_config
from agent.daemon import Agent
from agent.journal import STATE_FILE, Journal
from agent.logs import instance_log
from agent.state_dir import StateDirInUse, StateDirUnusable, claimed
from agent.step_lock import end_leftover_step
from runtime.logs import configure_logging

EXIT_CONFIG = 2
EXIT_STATE_DIR_IN_USE = 3


def _error(message: str) -> None:
    print(f"rollout agent: error: {message}", file=sys.stderr)


async def _serve(config: AgentConfig, journal: Journal) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Before anything is rolled back or reported: a step of a killed run may still be running.
    log = instance_log(__name__, config.instance_id)
    if await end_leftover_step(config.state_dir, log, stop):
        await Agent(config, journal=journal).run(stop)


def main(check_only: bool = False) -> int:
    try:
        config = load_config(os.environ)
    except ConfigError as exc:
        for problem in exc.problems:
            _error(problem)
        return EXIT_CONFIG
    if check_only:
        print("rollout agent: configuration ok", file=sys.stderr)
        return 0
    configure_logging(config.log_format)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(claimed(config.state_dir))
            journal = Journal.open(config.state_dir, config.first_run_version)
        except StateDirInUse as exc:
            _error(str(exc))
            return EXIT_STATE_DIR_IN_USE
        except StateDirUnusable as exc:
            _error(str(exc))
            return EXIT_CONFIG
        except OSError as exc:
            _error(f"AGENT_STATE_DIR {config.state_dir}: {exc}")
            return EXIT_CONFIG
        except ValueError as exc:
            _error(
                f"{config.state_dir / STATE_FILE} is not a journal this agent can read"
                f" ({type(exc).__name__}); move it aside only if no update is running"
            )
            return EXIT_CONFIG
        try:
            asyncio.run(_serve(config, journal))
        except StateDirUnusable as exc:  # the job in flight was reported failed, if it could be
            _error(str(exc))
            return EXIT_CONFIG
    logging.getLogger(__name__).info("exit")
    return 0
