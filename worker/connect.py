"""The one way every process (API, worker, CLI, tests) opens a Temporal client."""

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from contract.settings import Settings


async def connect_temporal(settings: Settings, *, lazy: bool = False) -> Client:
    """A client speaking pydantic payloads; `lazy` defers the connection to its first call, so
    the API starts (and serves its read model) while Temporal is still down."""
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
        lazy=lazy,
    )
