from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, JSONType, UTCDateTime, utcnow


class EvalSample(Base):
    """One held-out conversation (`row`, its number in the evaluation set) seen by one model of an evaluation
    job: its scoring numbers and, for the sampled conversations, the reply and the judge's verdict. A re-run
    of the job only does what a row does not hold yet (docs/architecture.md, "Evaluation")."""

    __tablename__ = "eval_sample"

    job_id: Mapped[str] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), primary_key=True)
    row: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    model: Mapped[str] = mapped_column(String(1024), primary_key=True)  # "base", a checkpoint id or path, a job id
    # None until scored; then scored | prompt_only (ends with a user turn) | too_long | no_scored_tokens
    scoring: Mapped[str | None] = mapped_column(String(16))
    nll: Mapped[float | None] = mapped_column(Float)  # Σ weight·(−logprob) over the scored tokens
    weight: Mapped[float | None] = mapped_column(Float)  # Σ weight: the scored tokens
    sampled: Mapped[bool] = mapped_column(default=False)  # one of the first `samples` usable conversations
    messages: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType)  # the prompt context (sampled rows)
    reference: Mapped[str | None] = mapped_column(Text)  # the set's own last reply; None for a prompt-only row
    reply: Mapped[str | None] = mapped_column(Text)  # the model's sampled reply
    opponent: Mapped[str | None] = mapped_column(String(1024))  # what the judge compared it with: base | reference
    verdict: Mapped[str | None] = mapped_column(String(8))  # win | tie | loss | error (the judge failed)
    reason: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
