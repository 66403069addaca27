from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, JSONType, UTCDateTime, new_id, utcnow


class Team(Base):
    __tablename__ = "team"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("team"))
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Per-team quotas over the server's defaults: "generation_max_cost_usd" (the sum of max_cost_usd of the
    # team's unfinished generation jobs) and "upload_bytes" (storage for uploads). Missing: the setting's value.
    limits: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, server_default="{}")
