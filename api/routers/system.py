"""Liveness of dependencies and build identity, for load balancers and operators."""

import asyncio
import subprocess
from collections.abc import Awaitable
from functools import cache
from importlib import metadata
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import PoolDep, TemporalDep

router = APIRouter(tags=["system"])

_CHECK_TIMEOUT_SECONDS = 3.0


@router.get("/health")
async def health(pool: PoolDep, temporal: TemporalDep) -> JSONResponse:
    """503 naming each dependency that is down, so an operator knows where to look."""
    checks = {
        "database": await _check(pool.fetchval("SELECT 1")),
        "temporal": await _check(temporal.service_client.check_health()),
    }
    down = {name: state for name, state in checks.items() if state != "ok"}
    if down:
        detail = "down: " + ", ".join(f"{name} {state}" for name, state in down.items())
        return JSONResponse(
            status_code=503, content={"status": "unavailable", "detail": detail, "checks": checks}
        )
    return JSONResponse({"status": "ok", "checks": checks})


async def _check(probe: Awaitable[object]) -> str:
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT_SECONDS):
            answer = await probe
    except Exception as exc:
        return f"unreachable ({type(exc).__name__})"
    return "ok" if answer is not False else "not serving"


@cache
def _git_sha() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=2,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


@router.get("/version")
async def version() -> dict[str, str | None]:
    return {"version": metadata.version("rollout-control-plane"), "gitSha": _git_sha()}
