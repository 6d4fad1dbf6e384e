"""Plain log lines for the agent; each line names its instance, since a fleet simulator runs many
agents in one process. Secrets and signatures are never passed to a logger."""

import logging
import sys
from collections.abc import MutableMapping
from typing import Any


class InstanceLog(logging.LoggerAdapter):
    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        extra = self.extra or {}
        return f"[{extra['instance_id']}] {msg}", kwargs


def instance_log(name: str, instance_id: str) -> InstanceLog:
    return InstanceLog(logging.getLogger(name), {"instance_id": instance_id})


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(logging.WARNING)
