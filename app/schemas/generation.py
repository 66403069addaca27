"""The generation job spec and its presets (a template + output format + defaults a spec may override)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from app.schemas.common import RefOrOutput, Seed, StrictModel, TemplateVars

Topic = Annotated[str, Field(min_length=1, max_length=2000, description="at most 2,000 characters")]

DIALOGUE_FORMAT = (
    'Reply with JSON only, exactly of this form: {"messages": [{"role": "user", "content": "..."}, '
    '{"role": "assistant", "content": "..."}, ...]} — roles alternate, starting with "user" and ending with '
    '"assistant".'
)


@dataclass(frozen=True)
class Preset:
    prompt: str
    system: str
    output: Literal["dialogue", "completion"]
    defaults: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "scaffolding": Preset(
        system=(
            "You write realistic tutoring dialogues for training a patient mentor model. The mentor never gives "
            "the answer away: it asks guiding questions, offers hints one step at a time, checks the student's "
            "reasoning and lets the student reach the answer. " + DIALOGUE_FORMAT
        ),
        prompt=(
            "Write a dialogue of {{ turns }} exchanges between a student (role \"user\") and a mentor (role "
            "\"assistant\").\nSubject: {{ topic }}.\nLevel: {{ difficulty }}.\nFirst invent one concrete "
            "problem on this subject at this level. The student is stuck on it because they {{ misconception }}. "
            "The mentor's first move is to {{ mentor_move }}; from there it scaffolds with questions and hints, "
            "never stating the answer, until the student reaches it. Variant {{ variant }}."
        ),
        output="dialogue",
        defaults={"temperature": 0.8, "max_tokens": 2048, "vars": {"turns": 4}},
    ),
    "qa": Preset(
        system="You write one clear question a learner would ask about a topic and an accurate, helpful answer. "
        + DIALOGUE_FORMAT,
        prompt="Topic: {{ topic }}. Write {{ question_type }} a learner would ask about it, and its answer "
        "(variant {{ variant }}).",
        output="dialogue",
        defaults={"temperature": 0.7, "max_tokens": 1024},
    ),
}


class GenerationSpec(StrictModel):
    """Items come from exactly one of `topics` (× `per_topic`), `source_artifact` (one per row) or `count`.

    The prompt is a Jinja template; it sees `topic`, `variant`, `index`, `seed`, `row` (for artifact rows)
    and your `vars`. With a `preset`, each item also gets one value per axis of the preset's taxonomy
    (app/schemas/taxonomies.py), chosen from (`seed`, index) alone; `topic` is the taxonomy's subject unless
    `topics` are given."""

    model: str = Field(default="moonshotai/kimi-k2", min_length=1, max_length=200)
    preset: Literal["scaffolding", "qa"] | None = None
    prompt: str | None = Field(default=None, max_length=50_000)
    system: str | None = Field(default=None, max_length=50_000)
    vars: TemplateVars = Field(default_factory=dict)
    topics: list[Topic] | None = Field(default=None, min_length=1, max_length=100_000)
    per_topic: int = Field(default=1, ge=1, le=10_000)
    source_artifact: RefOrOutput | None = None
    count: int | None = Field(default=None, ge=1, le=1_000_000)
    output: Literal["dialogue", "completion"] | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=100_000)
    seed: Seed = 0
    concurrency: int = Field(default=16, ge=1, le=512)
    requests_per_second: float | None = Field(default=None, gt=0, le=10_000)
    max_cost_usd: float | None = Field(default=None, gt=0, le=1_000_000)
    max_attempts_per_item: int = Field(default=5, ge=1, le=20)
    dedupe: bool = True

    @model_validator(mode="after")
    def _check(self) -> GenerationSpec:
        sources = [name for name in ("topics", "source_artifact", "count") if getattr(self, name) is not None]
        if len(sources) != 1:
            raise ValueError("give exactly one of topics, source_artifact or count (the items to generate)")
        if self.preset is None and self.prompt is None:
            raise ValueError("give a prompt template, or a preset ('scaffolding' or 'qa')")
        if self.topics is not None and len(self.topics) * self.per_topic > 1_000_000:
            raise ValueError("topics × per_topic must be at most 1,000,000 items")
        return self

    def resolved(self) -> dict[str, Any]:
        """The effective settings: the preset's, overridden by what this spec sets."""
        preset = PRESETS[self.preset] if self.preset else None
        base: dict[str, Any] = dict(preset.defaults) if preset else {}
        out = {
            "prompt": self.prompt or (preset.prompt if preset else ""),
            "system": self.system if self.system is not None else (preset.system if preset else None),
            "output": self.output or (preset.output if preset else "completion"),
            "vars": {**base.get("vars", {}), **self.vars},
        }
        for name in ("temperature", "top_p", "max_tokens"):
            value = getattr(self, name)
            out[name] = value if value is not None else base.get(name)
        return out
