from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, JSONType, UTCDateTime, new_id, utcnow


class Pipeline(Base):
    """Named steps submitted together; each step is an ordinary job (`job.pipeline_id`, `job.pipeline_step`).
    Its status is derived from its jobs' (docs/architecture.md, "Multi-step pipelines")."""

    __tablename__ = "pipeline"
    __table_args__ = (
        UniqueConstraint("team_id", "idempotency_key"),
        Index("ix_pipeline_team_id_id", "team_id", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("pl"))
    team_id: Mapped[str] = mapped_column(ForeignKey("team.id"))
    name: Mapped[str | None] = mapped_column(String(200))
    labels: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    steps: Mapped[list[dict[str, str]]] = mapped_column(JSONType, default=list)  # [{name, job_id}] in order
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    estimate: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


def pipeline_status(statuses: list[str] | set[str]) -> str:
    """A pipeline's status from its steps': the most advanced unfinished one while any is unfinished; then
    succeeded if every step did, else failed if one failed, else cancelled."""
    for unfinished in ("running", "queued", "pending"):
        if unfinished in statuses:
            return unfinished
    if all(s == "succeeded" for s in statuses):
        return "succeeded"
    return "failed" if "failed" in statuses else "cancelled"
