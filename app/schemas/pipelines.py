"""Pipelines: named steps submitted together, each an ordinary job (docs/architecture.md, "Multi-step pipelines")."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints

from app.schemas.common import Label, StrictModel, WebhookUrl
from app.schemas.jobs import JobCreate, JobError

StepName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"),
                     Field(description="a letter, then up to 63 letters, digits, '_' or '-'")]


class PipelineCreate(StrictModel):
    """Each step is a job body (`kind`, `spec`, …). A step's spec may take an earlier step's output with
    `{"$ref": "STEP.OUTPUT"}`, and its `depends_on` may name steps; a step waits for every step it names."""

    name: Label | None = None
    labels: dict[Label, Label] = Field(default_factory=dict, max_length=50)
    steps: dict[StepName, JobCreate] = Field(min_length=1, max_length=32)
    webhook_url: WebhookUrl | None = Field(default=None, description="receives a signed POST (Standard "
                                           "Webhooks) when the pipeline ends")


class PipelineStepRead(BaseModel):
    name: str
    job_id: str
    kind: str
    status: Literal["pending", "queued", "running", "succeeded", "failed", "cancelled"]
    depends_on: list[str] = Field(description="the steps it waits for")
    progress: dict[str, Any] | None
    result: dict[str, Any] | None
    error: JobError | None


class PipelineRead(BaseModel):
    id: str
    name: str | None
    labels: dict[str, str]
    status: Literal["pending", "queued", "running", "succeeded", "failed", "cancelled"] = Field(
        description="failed or cancelled as soon as a step is; succeeded when every step is; else the most "
                    "advanced of running, queued, pending")
    steps: list[PipelineStepRead]
    estimate: dict[str, Any] | None
    webhook_url: str | None
    created_at: datetime


class PipelineList(BaseModel):
    data: list[PipelineRead]
    has_more: bool
    next_cursor: str | None


class PipelineDryRun(BaseModel):
    dry_run: Literal[True]
    steps: dict[str, dict[str, Any]] = Field(description="per step: kind, depends_on and estimate")
    estimate: dict[str, Any]
