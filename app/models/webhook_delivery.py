from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, JSONType, UTCDateTime, new_id, utcnow


class WebhookDelivery(Base):
    """One signed POST owed for a job's (or a pipeline's) terminal state: the webhook outbox
    (docs/architecture.md, "Webhooks"). Written in the transaction that records the terminal state; sent, and
    retried with backoff, by the workers' webhook sweep. `event_key` identifies the transition (a job's id
    and its terminal event's seq), so a transition cannot be delivered twice."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (Index("ix_webhook_delivery_status_next_attempt_at", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("whd"))
    team_id: Mapped[str] = mapped_column(ForeignKey("team.id"))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), index=True)
    pipeline_id: Mapped[str | None] = mapped_column(ForeignKey("pipeline.id", ondelete="CASCADE"), index=True)
    event_key: Mapped[str] = mapped_column(String(200), unique=True)
    event_type: Mapped[str] = mapped_column(String(40))  # job.succeeded, pipeline.failed, ...
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)  # the body's `data`: never a secret
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending, delivered, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The database's clock. While a sender holds a delivery, it is pushed past the send's timeout (its lease).
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
