from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, ForeignKey, Index, Integer, String, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, JSONType, UTCDateTime, new_id, utcnow

ACTIVE_STATUSES = ("pending", "queued", "running")
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")


class Job(Base):
    """The whole state of a job. A Celery message only says "drive job J" (docs/architecture.md, "The rule")."""

    __tablename__ = "job"
    __table_args__ = (
        UniqueConstraint("team_id", "idempotency_key"),
        Index("ix_job_status_heartbeat_at", "status", "heartbeat_at"),
        Index("ix_job_team_id_id", "team_id", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("job"))
    team_id: Mapped[str] = mapped_column(ForeignKey("team.id"))
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    labels: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    depends_on: Mapped[list[str]] = mapped_column(JSONType, default=list)
    # A step of a pipeline, under this name; the spec may hold {"$ref": "JOB.OUTPUT"} until release.
    pipeline_id: Mapped[str | None] = mapped_column(ForeignKey("pipeline.id", ondelete="SET NULL"), index=True)
    pipeline_step: Mapped[str | None] = mapped_column(String(64))
    has_refs: Mapped[bool] = mapped_column(default=False, server_default=false())
    estimate: Mapped[dict[str, Any] | None] = mapped_column(JSONType)  # app/services/estimates.py
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    # Finishing it should release pending jobs (saves the finisher a query when nobody waits).
    has_dependents: Mapped[bool] = mapped_column(default=False, server_default=false())
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType)

    # Attempts count the job's own failures; preemptions count the infrastructure's (a lost worker, a
    # shutdown, a stall), which resume the job without spending an attempt (docs/architecture.md).
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    preemptions: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Set when the job was handed back by the infrastructure: its next claim resumes the same attempt.
    preempted: Mapped[bool] = mapped_column(default=False, server_default=false())
    stall_seconds: Mapped[float | None] = mapped_column(Float)  # per-job override of the kind's stall limit
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_token: Mapped[int] = mapped_column(Integer, default=0)
    event_seq: Mapped[int] = mapped_column(Integer, default=0)

    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # the database's clock
    progress_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # last report of the pipeline
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime)  # a retry waits until then
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
