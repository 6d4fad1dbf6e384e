"""Process entry point of the agent (`rollout agent`, `python -m agent`): config from the env,
SIGTERM/SIGINT stop it cleanly, exit 0 after a clean stop, 2 for bad configuration."""

import asyncio
import logging
import os
import signal
import sys

from agent.config import ConfigError, load_config
from agent.daemon import Agent
from agent.journal import STATE_FILE
from contract.logs import LOG_FORMATS, configure_logging


async def _serve(agent: Agent) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await agent.run(stop)


def main(check_only: bool = False) -> int:
    try:
        config = load_config(os.environ)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"rollout agent: error: {problem}", file=sys.stderr)
        return 2
    log_format = os.environ.get("LOG_FORMAT", "text")
    if log_format not in LOG_FORMATS:
        print(
            f"rollout agent: error: LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}",
            file=sys.stderr,
        )
        return 2
    if check_only:
        print("rollout agent: configuration ok", file=sys.stderr)
        return 0
    configure_logging(log_format)
    try:
        agent = Agent(config)
    except OSError as exc:
        print(f"rollout agent: error: AGENT_STATE_DIR {config.state_dir}: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(
            f"rollout agent: error: {config.state_dir / STATE_FILE} is not a journal this agent"
            f" can read ({type(exc).__name__}); move it aside only if no update is running",
            file=sys.stderr,
        )
        return 2
    asyncio.run(_serve(agent))
    logging.getLogger(__name__).info("exit")
    return 0
