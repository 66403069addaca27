"""The export job spec: one checkpoint's LoRA weights, exported from Tinker as adapter artifacts."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.schemas.common import RefOrOutput, StrictModel


class ExportSpec(StrictModel):
    checkpoint: RefOrOutput = Field(description="a checkpoint id of your team (GET /v1/jobs/{id}/checkpoints), "
                                                "a tinker:// path of one, or a training job's state_path output")


class ExportResult(BaseModel):
    """What an export job's `result` holds."""

    adapter_artifacts: list[str] = Field(description="one `adapter` artifact per exported file")
    adapter_path: str = Field(description="the tinker:// path of the exported weights")
    checkpoint: str = Field(description="the checkpoint id that was exported")
    step: int = Field(description="the training step of that checkpoint")
