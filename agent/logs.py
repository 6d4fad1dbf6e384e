"""Agent loggers carry their instance id as context (a fleet simulator runs many agents in one
process): a field in JSON logs, a `[instance_id=...]` suffix in plain ones (runtime/logs.py).
Secrets and signatures are never passed to a logger."""

import logging
from collections.abc import MutableMapping
from typing import Any


class InstanceLog(logging.LoggerAdapter):
    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def instance_log(name: str, instance_id: str) -> InstanceLog:
    return InstanceLog(logging.getLogger(name), {"instance_id": instance_id})
