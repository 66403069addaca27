"""The dataset job spec: where rows come from, how they map to ChatML, and how they are cleaned."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from app.schemas.common import Name, RefOrOutput, RowCount, Seed, StrictModel

SHAPES = ("auto", "messages", "sharegpt", "alpaca", "prompt_completion", "question_answer")


class HubSource(StrictModel):
    """A dataset on the Hugging Face Hub, streamed."""

    type: Literal["hub"]
    name: str = Field(min_length=1, max_length=200, examples=["HuggingFaceH4/no_robots"])
    config: Name | None = None
    split: Name = "train"
    revision: Name | None = None


class LocalSource(StrictModel):
    """A directory shaped like a Hub dataset, under TUNEQ_LOCAL_DATASETS_DIR (read with the same loader)."""

    type: Literal["local"]
    path: str = Field(min_length=1, max_length=500)
    config: Name | None = None
    split: Name = "train"


class FileSource(StrictModel):
    """A file uploaded with POST /v1/files, or any earlier job's artifact (e.g. a dataset split)."""

    type: Literal["artifact"]
    artifact_id: RefOrOutput


Source = Annotated[HubSource | LocalSource | FileSource, Field(discriminator="type")]


class ColumnRole(StrictModel):
    column: Name
    role: Literal["system", "user", "assistant"]


class ColumnMapping(StrictModel):
    """An explicit shape: a column holding the turns (`messages` + `role_map`), or columns → roles.

    `columns` is a list because its order is the order of the turns (JSON objects have no reliable order
    once stored, e.g. in PostgreSQL jsonb)."""

    messages: Name | None = None
    role_map: dict[Name, Name] | None = Field(default=None, max_length=50)
    role_key: Name | None = None
    content_key: Name | None = None
    columns: list[ColumnRole] | None = Field(default=None, min_length=2, max_length=50)

    @model_validator(mode="after")
    def _one_kind(self) -> ColumnMapping:
        if (self.messages is None) == (self.columns is None):
            raise ValueError("give either 'messages' (a column of turns) or 'columns' (column → role)")
        return self


class DatasetSpec(StrictModel):
    source: Source
    shape: Literal["auto", "messages", "sharegpt", "alpaca", "prompt_completion", "question_answer"] | ColumnMapping = (
        "auto"
    )
    system_prompt: str | None = Field(default=None, max_length=20_000)
    system_prompt_mode: Literal["add", "replace"] = "add"
    dedupe: bool = True
    min_turns: int = Field(default=1, ge=1, le=1000, description="minimum assistant turns")
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000, description="drop longer rendered rows")
    train_on: Literal["all_assistant", "last_assistant"] = "all_assistant"
    enable_thinking: bool = True
    shuffle: bool = True
    seed: Seed = 0
    validation_fraction: float | None = Field(default=None, gt=0, lt=1)
    validation_rows: RowCount | None = None
    max_examples: RowCount | None = None

    @model_validator(mode="after")
    def _one_validation_size(self) -> DatasetSpec:
        if self.validation_fraction is not None and self.validation_rows is not None:
            raise ValueError("give validation_fraction or validation_rows, not both")
        return self

    def shape_for_converter(self) -> str | dict[str, Any]:
        if isinstance(self.shape, ColumnMapping):
            mapping = self.shape.model_dump(exclude_none=True, exclude={"columns"})
            if self.shape.columns is not None:
                mapping["columns"] = {c.column: c.role for c in self.shape.columns}
            return mapping
        return self.shape
