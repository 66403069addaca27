from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Unknown fields are an error, so a typo is reported instead of silently ignored."""

    model_config = ConfigDict(extra="forbid")
