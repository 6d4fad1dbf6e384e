"""Dependencies shared by routers, as `Annotated` aliases so signatures read as intent.

All are `async def`, even those that only read app state: FastAPI runs a plain `def`
dependency in a worker thread, a thread hop per dependency per request.
"""

import hmac
from typing import Annotated

import asyncpg
from fastapi import Depends, Header, HTTPException, Path, Request, status
from temporalio.client import Client

from contract.wire import ID_PATTERN
from server.settings import ApiSettings

ADMIN_TOKEN_HEADER = "x-cp-admin-token"  # noqa: S105 (a header name, not a secret)


async def get_settings(request: Request) -> ApiSettings:
    return request.app.state.settings


async def get_pool(request: Request) -> asyncpg.Pool:
    return request.app.state.pool


async def get_temporal(request: Request) -> Client:
    return request.app.state.temporal


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
PoolDep = Annotated[asyncpg.Pool, Depends(get_pool)]
TemporalDep = Annotated[Client, Depends(get_temporal)]


def admin_token_problem(settings: ApiSettings, presented: bytes | None) -> str | None:
    """Why `presented` (the raw header bytes) is not the admin token, or None when it is."""
    if presented is None:
        return f"missing {ADMIN_TOKEN_HEADER} header"
    expected = settings.control_plane_admin_token.get_secret_value().encode()
    if not hmac.compare_digest(presented, expected):
        return "invalid admin token"
    return None


async def require_admin(
    settings: SettingsDep,
    x_cp_admin_token: Annotated[str | None, Header()] = None,
) -> str:
    """Admin endpoints need `x-cp-admin-token`; returns the actor name recorded in audit.

    api.middleware.edge checks the same before the body is read; this keeps the header in the schema
    and each route safe on its own.
    """
    presented = None if x_cp_admin_token is None else x_cp_admin_token.encode("latin-1")
    problem = admin_token_problem(settings, presented)
    if problem is not None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, problem)
    return "admin"


AdminActor = Annotated[str, Depends(require_admin)]

# Ids in paths: a format check before SQL (422 naming the parameter).
IdPath = Annotated[str, Path(pattern=ID_PATTERN)]
