"""The FastAPI application: one pool (and later one Temporal client) per process, via lifespan."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.errors import install_error_handlers
from api.routers import releases, system
from contract.settings import ApiSettings
from store.pool import open_pool


def create_app(settings: ApiSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.pool = await open_pool(
            settings.database_url,
            min_size=settings.db_pool_min_size,
            max_size=settings.db_pool_max_size,
        )
        try:
            yield
        finally:
            await app.state.pool.close()

    app = FastAPI(title="Rollout control plane", version="1", lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(system.router)
    app.include_router(releases.router)
    return app
