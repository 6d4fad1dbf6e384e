"""The worker's Prometheus endpoint: the SDK's own metrics (task latencies, slots, sticky cache).

Served by the SDK's core from a Runtime made before the client, since a client and its workers
report to the Runtime they were created with. Off unless WORKER_METRICS_ADDRESS is set: a fixed
default port would stop a second worker on the same host.
"""

from temporalio.runtime import PrometheusConfig, Runtime

from server.settings import Settings
from temporal_client.core_logs import runtime_with


class MetricsAddressError(RuntimeError):
    """The endpoint cannot listen there (taken, or not an IP:port)."""


def metrics_runtime(settings: Settings) -> Runtime | None:
    """A Runtime exporting on `settings.worker_metrics_address`, or None (the SDK's default)."""
    address = settings.worker_metrics_address
    if address is None:
        return None
    try:
        return runtime_with(PrometheusConfig(bind_address=address))
    except ValueError as exc:
        raise MetricsAddressError(f"WORKER_METRICS_ADDRESS {address}: {exc}") from None
