"""The FastAPI application: one pool and one Temporal client per process, opened in lifespan."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig

from api import connections
from api.agents.batchers import poll_batcher, recheck_batcher, report_batcher
from api.agents.held_polls import Dispatcher
from api.agents.nonce_janitor import sweep_forever
from api.errors import DatabaseOutage, install_error_handlers, pool_reconnects_noted_as
from api.fast_lane import ControlPlaneApi, FastLane
from api.metrics import Scraper
from api.metrics_listener import MetricsListener
from api.middleware.edge import EdgeGate
from api.middleware.request_timer import RequestTimer
from api.routers import (
    agent,
    channels,
    freeze,
    instances,
    jobs,
    metrics,
    releases,
    rollouts,
    system,
    webhooks,
)
from api.routers.docs import install_offline_docs
from runtime.build import package_version
from server.settings import ApiSettings
from services import reports
from services.webhook_dispatcher import WebhookDispatcher
from store.pool import open_pool
from temporal_client.connect import connect_temporal
from temporal_client.report_signals import ReportSignals

NO_FASTAPI_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


def create_app(settings: ApiSettings) -> ControlPlaneApi:
    connections.configure(settings)
    outage = DatabaseOutage()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.pool = await open_pool(
            settings.database_url,
            min_size=settings.db_pool_min_size,
            max_size=settings.db_pool_max_size,
        )
        outage.pool = app.state.pool  # asked whether an outage is over
        # Lazy: the API starts, and answers from PostgreSQL, while Temporal is still down.
        app.state.temporal = await connect_temporal(settings, lazy=True)
        app.state.polls = poll_batcher(app.state.pool)
        app.state.rechecks = recheck_batcher(app.state.pool)
        app.state.report_claims = report_batcher(app.state.pool)
        app.state.report_signals = ReportSignals(
            app.state.temporal, timeout=reports.TEMPORAL_TIMEOUT_SECONDS
        )
        app.state.dispatch = Dispatcher(
            settings.database_url,
            app.state.pool,
            max_seconds=settings.long_poll_max_seconds,
            max_held=settings.long_poll_max_held,
        )
        await app.state.dispatch.start()
        app.state.scraper = Scraper(app.state.pool)
        listener = _metrics_listener(settings, app.state.scraper)
        if listener is not None:
            await listener.start()
        deliveries = WebhookDispatcher(
            app.state.pool,
            settings.database_url,
            timeout_seconds=settings.webhook_timeout_seconds,
            retry_base_seconds=settings.webhook_retry_base_seconds,
            max_attempts=settings.webhook_max_attempts,
            on_unavailable=outage.noted,  # one line for the outage, not one per round
        )
        await deliveries.start()
        janitor = asyncio.create_task(sweep_forever(app.state.pool, outage))
        try:
            with pool_reconnects_noted_as(outage):
                yield
        finally:
            janitor.cancel()
            await deliveries.stop()
            if listener is not None:
                await listener.stop()
            await app.state.dispatch.stop()
            await app.state.pool.close()

    app = ControlPlaneApi(
        title="Rollout control plane",
        version=package_version() or "unknown",  # the same as /version
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # FastAPI's own OpenTelemetry asks on every request whether a provider is configured,
        # through os.environ: 11 % of the API's CPU under idle polls. Metrics are Prometheus's
        # (/metrics) and logs are ours, so it stays off.
        telemetry=NO_FASTAPI_TELEMETRY,
    )
    app.add_middleware(EdgeGate, settings=settings, on_success=outage.over)
    secrets = _secrets(settings)  # never in an access line (api.middleware.access_log)
    app.add_middleware(RequestTimer, secrets=secrets)  # outermost: logs the gate's refusals too
    # The connections (api.connections) hand polls and reports to the fast lane: timed and
    # bounded as the rest, then answered by their endpoint, with nothing else between.
    lane = FastLane(app, agent.FAST_ROUTES, secrets=secrets, on_success=outage.over)
    app.fast_lane = lane
    install_error_handlers(app, outage)
    # Polls and reports are served by the fast lane; their routes still give the OpenAPI
    # document, a 405 to any other method, and serve a request that reaches the app otherwise.
    app.include_router(agent.router)
    install_offline_docs(app)
    app.include_router(system.router)
    app.include_router(releases.router)
    app.include_router(instances.router)
    if settings.api_metrics_address is None:
        app.include_router(metrics.router)
    app.include_router(rollouts.router)
    app.include_router(jobs.router)
    app.include_router(freeze.router)
    app.include_router(channels.router)
    app.include_router(webhooks.router)
    return app


def _metrics_listener(settings: ApiSettings, scraper: Scraper) -> MetricsListener | None:
    """/metrics on API_METRICS_ADDRESS instead of the API's port, when set."""
    if settings.api_metrics_address is None:
        return None
    token = settings.api_metrics_token
    return MetricsListener(
        settings.api_metrics_address, scraper, token.get_secret_value() if token else None
    )


def _secrets(settings: ApiSettings) -> frozenset[str]:
    """The values a client might send by mistake where they get logged (a query string)."""
    held = (
        settings.control_plane_admin_token,
        settings.control_plane_release_signing_secret,
        settings.control_plane_agent_token,
        settings.api_metrics_token,
    )
    return frozenset(s.get_secret_value() for s in held if s is not None and s.get_secret_value())
