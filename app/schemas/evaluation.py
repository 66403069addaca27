"""The evaluation job spec: the base model against LoRA sampler checkpoints on held-out conversations, with an
optional judge model (over OpenRouter) that compares their replies."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from app.schemas.common import Name, RefOrOutput, StrictModel


class JudgeSpec(StrictModel):
    model: Name = Field(description="the judge's OpenRouter model id, e.g. openai/gpt-4o-mini")
    rubric: str | None = Field(default=None, max_length=4000,
                               description="what makes a reply better (default: helpful, correct, clear)")
    against: Literal["base", "reference"] | None = Field(
        default=None, description="what each model's reply is compared with: the base model's reply, or the "
        "set's own reply (default: base when the base is evaluated, else reference)")
    concurrency: int = Field(default=8, ge=1, le=64, description="judge requests in flight")


class EvaluationSpec(StrictModel):
    base_model: Name = "Qwen/Qwen3-8B"
    eval_artifact: RefOrOutput = Field(description="held-out ChatML conversations (a dataset artifact)")
    checkpoints: list[RefOrOutput] = Field(default_factory=list, max_length=8,
                                   description="sampler checkpoint ids, or tinker://…/sampler_weights/… paths")
    training_job: RefOrOutput | None = Field(default=None, description="also evaluate this training job's final sampler "
                                     "weights, resolved when the job runs (pair it with depends_on)")
    include_base: bool = Field(default=True, description="score the base model too, as the baseline")
    max_examples: int = Field(default=200, ge=1, le=10_000, description="the first N conversations are used")
    samples: int = Field(default=4, ge=0, le=100, description="conversations to sample a reply for, per model")
    max_tokens: int = Field(default=256, ge=1, le=8192, description="per sampled reply")
    temperature: float = Field(default=0.0, ge=0, le=2, description="0 = greedy")
    max_length: int = Field(default=8192, ge=16, le=131_072, description="longer conversations are skipped")
    train_on: Literal["all_assistant", "last_assistant"] = Field(
        default="all_assistant", description="which assistant turns the loss is measured on")
    enable_thinking: bool = True
    judge: JudgeSpec | None = Field(default=None, description="compare each model's sampled replies with the "
                                    "base's (or the reference) by a judge model, in both orders")

    @model_validator(mode="after")
    def _something_to_evaluate(self) -> EvaluationSpec:
        if not self.include_base and not self.checkpoints and self.training_job is None:
            raise ValueError("nothing to evaluate: give checkpoints or training_job, or set include_base")
        refs = [str(ref) for ref in self.checkpoints]  # a ref is a model's label: each one once
        if repeated := sorted({ref for ref in refs if refs.count(ref) > 1}):
            raise ValueError(f"checkpoints lists {', '.join(repeated)} more than once; give each checkpoint once")
        if self.judge is not None:
            if not self.checkpoints and self.training_job is None:
                raise ValueError("judge: there is no model to judge; give checkpoints or training_job")
            if self.samples == 0:
                raise ValueError("judge: the judge compares sampled replies; set samples to at least 1")
            if self.judge.against is None:
                self.judge.against = "base" if self.include_base else "reference"
            elif self.judge.against == "base" and not self.include_base:
                raise ValueError("judge.against 'base' needs include_base (the base model's replies)")
        return self
