"""Dependencies shared by routers, as `Annotated` aliases so signatures read as intent."""

import hmac
from typing import Annotated

import asyncpg
from fastapi import Depends, Header, HTTPException, Request, status
from temporalio.client import Client

from api.handouts import HandoutCache
from contract.settings import ApiSettings


def get_settings(request: Request) -> ApiSettings:
    return request.app.state.settings


def get_pool(request: Request) -> asyncpg.Pool:
    return request.app.state.pool


def get_temporal(request: Request) -> Client:
    return request.app.state.temporal


def get_handout_cache(request: Request) -> HandoutCache:
    return request.app.state.handouts


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
PoolDep = Annotated[asyncpg.Pool, Depends(get_pool)]
TemporalDep = Annotated[Client, Depends(get_temporal)]
HandoutCacheDep = Annotated[HandoutCache, Depends(get_handout_cache)]


def require_admin(
    settings: SettingsDep,
    x_cp_admin_token: Annotated[str | None, Header()] = None,
) -> str:
    """Admin endpoints need `x-cp-admin-token`; returns the actor name recorded in audit."""
    expected = settings.control_plane_admin_token.get_secret_value()
    if x_cp_admin_token is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing x-cp-admin-token header")
    if not hmac.compare_digest(x_cp_admin_token.encode(), expected.encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid admin token")
    return "admin"


AdminActor = Annotated[str, Depends(require_admin)]
