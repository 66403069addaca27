"""Response bodies of the upload and artifact routes (documentation of what they send)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ArtifactOut(BaseModel):
    id: str
    job_id: str | None = Field(description="the job that made it; null for an upload")
    kind: str = Field(description="upload, dataset, generation, evaluation, adapter, …")
    name: str = Field(description="display name (an upload's name as given)")
    format: str
    status: str
    rows: int | None
    bytes: int | None
    sha256: str | None
    meta: dict[str, Any]
    created_at: str | None


class ArtifactList(BaseModel):
    """A page of artifacts, newest first; pass `next_cursor` as `cursor` for the next page."""

    data: list[ArtifactOut]
    has_more: bool
    next_cursor: str | None


class PreviewOut(BaseModel):
    artifact_id: str
    rows: list[dict[str, Any]]


class RenderOut(BaseModel):
    artifact_id: str
    row: int
    num_tokens: int
    trained_tokens: int
    tokens: list[int]
    pieces: list[str]
    weights: list[float]
