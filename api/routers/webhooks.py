"""Webhook endpoints and deliveries (admin, services/webhooks.py; signed as Standard Webhooks):
add an endpoint (its secret shown once), list and remove them, list deliveries, redeliver one."""

from typing import Literal

from fastapi import APIRouter, Query, Response, status

from api.deps import AdminActor, IdPath, PoolDep
from api.openapi import admin_errors, not_found
from api.schemas import DeliveryOut, EndpointCreatedOut, EndpointOut, WebhookBody
from services import webhooks as webhook_service
from store import webhooks

router = APIRouter(prefix="/api/webhooks", tags=["webhooks"], responses=admin_errors())


@router.post("", status_code=status.HTTP_201_CREATED, response_model=EndpointCreatedOut)
async def add_webhook(body: WebhookBody, actor: AdminActor, pool: PoolDep) -> EndpointCreatedOut:
    """Its `secret` is in this answer only: the receiver verifies every delivery with it."""
    endpoint, secret = await webhook_service.add(
        pool, url=str(body.url), events=body.events, actor=actor
    )
    return EndpointCreatedOut(**endpoint.model_dump(), secret=secret)


@router.get("", response_model=list[EndpointOut])
async def list_webhooks(_: AdminActor, pool: PoolDep) -> list[EndpointOut]:
    return [EndpointOut(**e.model_dump()) for e in await webhooks.endpoints(pool)]


@router.delete("/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT, responses=not_found())
async def remove_webhook(webhook_id: IdPath, actor: AdminActor, pool: PoolDep) -> Response:
    await webhook_service.remove(pool, webhook_id, actor=actor)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/deliveries", response_model=list[DeliveryOut])
async def list_deliveries(
    _: AdminActor,
    pool: PoolDep,
    status_filter: Literal["pending", "delivered", "failed"] | None = Query(
        default=None, alias="status"
    ),
    webhook_id: str | None = Query(default=None, alias="webhookId", pattern=r"^[0-9a-f]{32}$"),
    limit: int = Query(default=100, ge=1, le=1000),
) -> list[DeliveryOut]:
    """Newest first."""
    found = await webhooks.deliveries(
        pool, status=status_filter, endpoint_id=webhook_id, limit=limit
    )
    return [DeliveryOut(**d.model_dump()) for d in found]


@router.post(
    "/deliveries/{delivery_id}/redeliver", response_model=DeliveryOut, responses=not_found()
)
async def redeliver(delivery_id: IdPath, actor: AdminActor, pool: PoolDep) -> DeliveryOut:
    """Sent again now, its attempts counted anew (also one that was delivered)."""
    again = await webhook_service.redeliver(pool, delivery_id, actor=actor)
    return DeliveryOut(**again.model_dump())
