from __future__ import annotations

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base


class JobDependency(Base):
    """`job_id` waits for `depends_on_id`. Indexed both ways: a finished job finds its dependents, and the
    reaper finds pending jobs whose dependencies all ended, without scanning (docs/architecture.md)."""

    __tablename__ = "job_dependency"
    __table_args__ = (Index("ix_job_dependency_depends_on_id", "depends_on_id"),)

    job_id: Mapped[str] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), primary_key=True)
    depends_on_id: Mapped[str] = mapped_column(String(40), primary_key=True)
