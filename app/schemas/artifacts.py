"""Response bodies of the upload and artifact routes (documentation of what they send)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from app.schemas.common import Label, StrictModel


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
    labels: dict[str, str] = Field(description="name → value; a job's outputs start with the job's labels")
    created_at: str | None


class ArtifactPatch(StrictModel):
    """Rename or relabel an artifact. `labels` is a JSON merge patch: a pair sets that label, a null value
    removes it, labels not named stay; at most 50 remain."""

    name: str | None = Field(default=None, min_length=1, max_length=255,
                             description="new display name: a plain file name, at most 255 bytes of UTF-8")
    labels: dict[Label, Label | None] | None = Field(default=None, max_length=100)


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
