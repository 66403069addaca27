from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, JSONType, UTCDateTime, new_id, utcnow


class Checkpoint(Base):
    """The weights saved after `step` steps; paths are tinker:// paths exactly as returned.

    A "state" row is resumable (`uri`) and, when sampler weights were saved at the same step, also sampleable
    (`sampler_uri`). Rows of kind "sampler" (`uri` = sampler weights) were written by runs before sampler
    checkpoints; they are still read. `loss`/`val_loss` are the training run's values at the step and
    `eval_loss` the auto-evaluation's score (mean loss per trained token of the sampler weights on the
    validation set).
    """

    __tablename__ = "checkpoint"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ckpt"))
    job_id: Mapped[str] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # "state" (resumable) or "sampler"
    uri: Mapped[str] = mapped_column(String(1024))
    sampler_uri: Mapped[str | None] = mapped_column(String(1024))
    next_step: Mapped[int] = mapped_column(Integer)
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    loss: Mapped[float | None] = mapped_column(Float)
    val_loss: Mapped[float | None] = mapped_column(Float)
    eval_loss: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
