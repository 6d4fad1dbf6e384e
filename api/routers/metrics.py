"""Prometheus exposition of the API processes' metrics plus fleet gauges read from PostgreSQL.

Not included when API_METRICS_ADDRESS moves /metrics to its own listener (api/metrics_listener.py).
With API_METRICS_TOKEN set, a scrape needs `Authorization: Bearer <token>` (401 otherwise).
"""

from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Request, status
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from api.deps import SettingsDep
from api.metrics import Scraper, bearer_token_problem

router = APIRouter(tags=["system"])


@router.get("/metrics", include_in_schema=False)
async def metrics(
    request: Request,
    settings: SettingsDep,
    authorization: Annotated[str | None, Header()] = None,
) -> Response:
    token = settings.api_metrics_token
    presented = None if authorization is None else authorization.encode("latin-1")
    problem = bearer_token_problem(token.get_secret_value() if token else None, presented)
    if problem is not None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, problem, headers={"www-authenticate": "Bearer"}
        )
    scraper: Scraper = request.app.state.scraper
    return Response(await scraper.text(), media_type=CONTENT_TYPE_LATEST)
