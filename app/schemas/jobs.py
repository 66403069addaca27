"""Request and response models for jobs. Specs per kind form a discriminated union on `kind`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from app.schemas.common import Label, Ref, StrictModel, WebhookUrl
from app.schemas.datasets import DatasetSpec
from app.schemas.evaluation import EvaluationSpec
from app.schemas.export import ExportSpec
from app.schemas.generation import GenerationSpec
from app.schemas.training import TrainingSpec


class JobCreateBase(StrictModel):
    labels: dict[Label, Label] = Field(default_factory=dict, max_length=50)
    depends_on: list[Ref] = Field(default_factory=list, max_length=50, description="Job ids that must succeed first")
    max_attempts: int | None = Field(default=None, ge=1, le=20,
                                     description="Attempts for the job's own failures (infrastructure "
                                                 "interruptions do not spend them)")
    stall_seconds: float | None = Field(default=None, ge=5, le=86_400,
                                        description="Preempt the job when it reports no progress for this "
                                                    "long (default: the server's limit for its kind)")
    webhook_url: WebhookUrl | None = Field(default=None, description="receives a signed POST (Standard "
                                           "Webhooks) when the job ends")


class TestJobSpec(StrictModel):
    """A job that only exercises the machinery (enabled by TUNEQ_ENABLE_TEST_JOBS)."""

    steps: int = Field(default=1, ge=0, le=100_000)
    step_seconds: float = Field(default=0.0, ge=0, le=600)
    fail_with: str | None = Field(default=None, max_length=500, description="Fail with this message")


class TestJobCreate(JobCreateBase):
    kind: Literal["test"]
    spec: TestJobSpec = Field(default_factory=TestJobSpec)


class DatasetJobCreate(JobCreateBase):
    kind: Literal["dataset"]
    spec: DatasetSpec


class GenerationJobCreate(JobCreateBase):
    kind: Literal["generation"]
    spec: GenerationSpec


class TrainingJobCreate(JobCreateBase):
    kind: Literal["training"]
    spec: TrainingSpec


class EvaluationJobCreate(JobCreateBase):
    kind: Literal["evaluation"]
    spec: EvaluationSpec


class ExportJobCreate(JobCreateBase):
    kind: Literal["export"]
    spec: ExportSpec


class CheckpointExportCreate(JobCreateBase):
    """POST /v1/checkpoints/{id}/export: the export job's options (all optional); its spec is the checkpoint
    named in the path."""


JobCreate = Annotated[
    TestJobCreate | DatasetJobCreate | GenerationJobCreate | TrainingJobCreate | EvaluationJobCreate
    | ExportJobCreate,
    Field(discriminator="kind"),
]


class JobError(BaseModel):
    code: str
    message: str
    user_error: bool
    details: dict[str, Any] = Field(default_factory=dict)


class JobRead(BaseModel):
    id: str
    kind: str
    status: Literal["pending", "queued", "running", "succeeded", "failed", "cancelled"]
    spec: dict[str, Any]
    labels: dict[str, str]
    depends_on: list[str]
    progress: dict[str, Any] | None
    result: dict[str, Any] | None
    error: JobError | None
    attempt: int = Field(description="Attempts spent by the job's own failures")
    max_attempts: int
    preemptions: int = Field(description="Times the infrastructure interrupted it (it resumed each time)")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested_at: datetime | None
    pipeline_id: str | None = None
    pipeline_step: str | None = None
    estimate: dict[str, Any] | None = Field(default=None, description="what the job was expected to do, at submit")
    webhook_url: str | None = None


class DryRun(BaseModel):
    dry_run: Literal[True]
    kind: str
    spec: dict[str, Any]
    depends_on: list[str]
    estimate: dict[str, Any] | None


class JobList(BaseModel):
    data: list[JobRead]
    has_more: bool
    next_cursor: str | None


class EventRead(BaseModel):
    seq: int
    type: str
    attempt: int
    data: dict[str, Any]
    created_at: datetime


class EventList(BaseModel):
    data: list[EventRead]
    has_more: bool
    next_cursor: int | None
