from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class WebhookDeliveryRead(BaseModel):
    """One signed POST owed for a terminal state; `webhook-id` is its `id`."""

    id: str
    job_id: str | None
    pipeline_id: str | None
    event_type: str = Field(examples=["job.succeeded", "pipeline.failed"])
    status: Literal["pending", "delivered", "failed"]
    attempts: int = Field(description="POSTs started so far")
    last_status_code: int | None = Field(description="the receiver's HTTP status on the last attempt")
    last_error: str | None = Field(description="why the last attempt did not deliver")
    created_at: datetime
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None = Field(description="when a pending delivery is tried next")
    delivered_at: datetime | None


class WebhookDeliveryList(BaseModel):
    data: list[WebhookDeliveryRead]
    has_more: bool
    next_cursor: str | None
