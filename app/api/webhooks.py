"""Webhook delivery routes: HTTP only (parse → service → response)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import Response

from app.api.deps import CallerDep, SessionDep
from app.api.responses import JSON
from app.schemas.webhooks import WebhookDeliveryList
from app.services import webhooks as webhooks_service

router = APIRouter(prefix="/v1", tags=["webhooks"])

Limit = Annotated[int, Query(ge=1, le=200)]
Cursor = Annotated[str | None, Query(pattern=r"^whd_[0-9a-f]{28}$", description="next_cursor of the previous page")]


@router.get("/jobs/{job_id}/webhook-deliveries", response_model=WebhookDeliveryList)
def list_job_deliveries(job_id: str, caller: CallerDep, session: SessionDep, limit: Limit = 50,
                        cursor: Cursor = None) -> Response:
    """The job's webhook deliveries, oldest first: one per terminal state it reached with a `webhook_url`."""
    data, has_more, next_cursor = webhooks_service.list_deliveries(
        session, team_id=caller.team_id, job_id=job_id, limit=limit, cursor=cursor)
    return JSON({"data": data, "has_more": has_more, "next_cursor": next_cursor})


@router.get("/pipelines/{pipeline_id}/webhook-deliveries", response_model=WebhookDeliveryList)
def list_pipeline_deliveries(pipeline_id: str, caller: CallerDep, session: SessionDep, limit: Limit = 50,
                             cursor: Cursor = None) -> Response:
    """The pipeline's own webhook deliveries (its steps' are under each job), oldest first."""
    data, has_more, next_cursor = webhooks_service.list_deliveries(
        session, team_id=caller.team_id, pipeline_id=pipeline_id, limit=limit, cursor=cursor)
    return JSON({"data": data, "has_more": has_more, "next_cursor": next_cursor})
