"""The Temporal SDK's core (Rust) writes its own log lines, such as a poll retried while
Temporal is unreachable, straight to stderr with ANSI colour codes by default: escape sequences
in log files, and lines that are not JSON under LOG_FORMAT=json. Every process's Runtime here
forwards them to Python logging instead (logger `temporalio.core`), so they are formatted like
every other line (runtime/logs.py). The levels stay the SDK's defaults: core WARN, others ERROR.
"""

import functools
import logging

from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)

CORE_LOGGER = logging.getLogger("temporalio.core")


def core_logging() -> LoggingConfig:
    return LoggingConfig(
        filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
        forwarding=LogForwardingConfig(logger=CORE_LOGGER, append_target_to_name=False),
    )


def runtime_with(metrics: PrometheusConfig | None) -> Runtime:
    """A Runtime whose core logs go through Python logging, exporting `metrics` if any."""
    return Runtime(telemetry=TelemetryConfig(logging=core_logging(), metrics=metrics))


@functools.cache
def forwarding_runtime() -> Runtime:
    """The process's Runtime when it needs no metrics of its own: one, made on first use."""
    return runtime_with(None)
