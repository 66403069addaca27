"""Response bodies of a job's outputs: generation items, evaluation samples, training metrics and checkpoints
(paged)."""

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


class SampleOut(BaseModel):
    row: int = Field(description="the conversation's number in the evaluation set (0-based)")
    model: str = Field(description="base, a checkpoint id or path, or a training job id")
    messages: list[dict[str, Any]] | None = Field(description="the prompt: the conversation before the reply")
    reference: str | None = Field(description="the set's own reply (null for a prompt-only conversation)")
    reply: str | None = Field(description="the model's sampled reply")
    opponent: str | None = Field(description="what the judge compared the reply with: base or reference")
    opponent_reply: str | None
    verdict: str | None = Field(description="win, tie or loss for this model (both orders combined); error when "
                                "the judge's answer could not be read")
    reason: str | None = Field(description="the judge's short reason")
    mean_loss: float | None = Field(description="this conversation's loss per scored token under this model")
    scored_tokens: int | None


class SamplesPage(BaseModel):
    data: list[SampleOut]
    has_more: bool
    next_cursor: str | None = Field(description="pass as ?after= for the next page")


class MetricsPage(BaseModel):
    job_id: str
    # [step, value] pairs as plain arrays (not tuples: `prefixItems` is not understood by every OpenAPI tool)
    series: dict[str, list[list[float | None]]] = Field(description="per metric name, [step, value] pairs")
    has_more: bool
    next_cursor: int | None = Field(description="pass as ?after_step= for the next page")


class CheckpointOut(BaseModel):
    id: str
    step: int
    kind: str = Field(description="state (resumable; sampleable too when sampler_uri is set) or sampler "
                                  "(sampler weights only, from runs before sampler checkpoints)")
    uri: str = Field(description="the tinker:// path")
    sampler_uri: str | None = Field(default=None, description="the sampler weights saved at the same step")
    next_step: int
    loss: float | None = Field(default=None, description="the training loss at this step")
    val_loss: float | None = Field(default=None, description="the validation loss at this step, if measured")
    eval_loss: float | None = Field(default=None, description="the auto-evaluation score (auto_eval): mean loss "
                                    "per trained token of the sampler weights on the validation set")
    data: dict[str, Any]
    created_at: str | None


class CheckpointsPage(BaseModel):
    data: list[CheckpointOut]
    has_more: bool
    next_cursor: str | None = Field(description="pass as ?after= for the next page")
