"""Prometheus exposition of the API processes' metrics plus fleet gauges read from PostgreSQL."""

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from api.deps import PoolDep
from api.metrics import exposition, fleet_gauges

router = APIRouter(tags=["system"])


@router.get("/metrics", include_in_schema=False)
async def metrics(pool: PoolDep) -> Response:
    return Response(exposition(await fleet_gauges(pool)), media_type=CONTENT_TYPE_LATEST)
