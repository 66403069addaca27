"""The training job spec: LoRA supervised fine-tuning through Tinker."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from app.schemas.common import MAX_STEPS, Name, RefOrOutput, Seed, StepCount, StrictModel


class AdamSpec(StrictModel):
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.95, ge=0, lt=1)
    eps: float = Field(default=1e-8, gt=0, le=1)
    weight_decay: float = Field(default=0.0, ge=0, le=10)
    grad_clip_norm: float = Field(default=0.0, ge=0, le=1e6, description="0 = no clipping")


class TrainingSpec(StrictModel):
    base_model: Name = "Qwen/Qwen3-8B"
    train_artifact: RefOrOutput = Field(description="a ChatML dataset artifact (from a dataset or generation job)")
    validation_artifact: RefOrOutput | None = None
    from_checkpoint: RefOrOutput | None = Field(default=None, description="a checkpoint id or a tinker:// state path")
    rank: int = Field(default=32, ge=1, le=512)
    learning_rate: float | None = Field(default=None, gt=0, lt=1, description="default: from the model's size")
    lr_schedule: Literal["constant", "linear", "cosine"] = "linear"
    warmup_steps: StepCount = 0
    batch_size: int = Field(default=128, ge=1, le=8192)
    epochs: int | None = Field(default=None, ge=1, le=1000)
    max_steps: int | None = Field(default=None, ge=1, le=1_000_000)
    max_length: int = Field(default=8192, ge=16, le=131_072, description="longer examples are dropped")
    train_on: Literal["all_assistant", "last_assistant"] = "all_assistant"
    enable_thinking: bool = True
    save_every: int = Field(default=20, ge=1, le=MAX_STEPS, description=f"1 ≤ steps ≤ {MAX_STEPS:,}")
    eval_every: int = Field(default=20, ge=0, le=MAX_STEPS, description="0 = only at the end")
    sampler_every: int | None = Field(default=None, ge=0, le=MAX_STEPS, description="also save sampler weights "
                                      "(sampleable, exportable) every N steps; default: with every save_every "
                                      "checkpoint; 0 = only the final weights")
    auto_eval: bool = Field(default=False, description="score every sampler checkpoint on validation_artifact "
                            "(mean loss per trained token) while training continues; the result names "
                            "best_checkpoint")
    seed: Seed = 0
    export_adapter: bool = Field(default=False, description="also export the final LoRA weights (Hugging Face "
                                 "format) and download them as `adapter` artifacts")
    adam: AdamSpec = Field(default_factory=AdamSpec)

    @model_validator(mode="after")
    def _duration(self) -> TrainingSpec:
        if self.epochs is None and self.max_steps is None:
            self.epochs = 1
        return self

    @model_validator(mode="after")
    def _auto_eval_needs_validation(self) -> TrainingSpec:
        if self.auto_eval and self.validation_artifact is None:
            raise ValueError("auto_eval scores checkpoints on the validation set: set validation_artifact (a "
                             "ChatML dataset artifact), or set auto_eval to false")
        return self

    @property
    def sampler_interval(self) -> int:
        """Steps between sampler checkpoints (0: only the final one)."""
        return self.save_every if self.sampler_every is None else self.sampler_every
