"""Liveness of dependencies and build identity, for load balancers and operators."""

import asyncio
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import PoolDep

router = APIRouter(tags=["system"])

_CHECK_TIMEOUT_SECONDS = 3.0


@router.get("/health")
async def health(pool: PoolDep) -> JSONResponse:
    problems: dict[str, str] = {}
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT_SECONDS):
            await pool.fetchval("SELECT 1")
    except Exception as exc:
        problems["database"] = f"unreachable ({type(exc).__name__})"
    if problems:
        down = ", ".join(f"{name} {why}" for name, why in problems.items())
        return JSONResponse(
            status_code=503,
            content={"status": "unavailable", "detail": f"down: {down}", "checks": problems},
        )
    return JSONResponse({"status": "ok", "checks": {"database": "ok"}})


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
