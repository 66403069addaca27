"""Response bodies of a job's outputs: generation items, training metrics and checkpoints (paged)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ItemOut(BaseModel):
    index: int
    status: str
    attempts: int
    output: Any
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: float | None
    error: Any


class ItemsPage(BaseModel):
    data: list[ItemOut]
    has_more: bool
    next_cursor: int | None = Field(description="pass as ?after= for the next page")


class MetricsPage(BaseModel):
    job_id: str
    # [step, value] pairs as plain arrays (not tuples: `prefixItems` is not understood by every OpenAPI tool)
    series: dict[str, list[list[float | None]]] = Field(description="per metric name, [step, value] pairs")
    has_more: bool
    next_cursor: int | None = Field(description="pass as ?after_step= for the next page")


class CheckpointOut(BaseModel):
    id: str
    step: int
    kind: str = Field(description="state (resumable) or sampler (sampleable)")
    uri: str = Field(description="the tinker:// path")
    next_step: int
    data: dict[str, Any]
    created_at: str | None


class CheckpointsPage(BaseModel):
    data: list[CheckpointOut]
    has_more: bool
    next_cursor: str | None = Field(description="pass as ?after= for the next page")
