from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, JSONType, UTCDateTime, utcnow


class GenerationItem(Base):
    """One requested dialogue of a generation job; a re-run only calls the provider for pending items."""

    __tablename__ = "generation_item"
    __table_args__ = (Index("ix_generation_item_job_id_status", "job_id", "status"),)

    job_id: Mapped[str] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | ok | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # provider calls made for this item
    output: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType)  # ChatML messages
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
