"""Prometheus exposition of this API process's metrics plus fleet gauges read from PostgreSQL."""

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import PoolDep
from api.metrics import refresh_fleet_gauges

router = APIRouter(tags=["system"])


@router.get("/metrics", include_in_schema=False)
async def metrics(pool: PoolDep) -> Response:
    await refresh_fleet_gauges(pool)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
