"""The dataset job spec: where rows come from, how they map to ChatML, and how they are cleaned and mixed."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from app.schemas.common import Name, OutputRef, RefOrOutput, RowCount, Seed, StrictModel

SHAPES = ("auto", "messages", "sharegpt", "alpaca", "prompt_completion", "question_answer")
MAX_SOURCES = 16
ShapeName = Literal["auto", "messages", "sharegpt", "alpaca", "prompt_completion", "question_answer"]
SOURCE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


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

    def for_converter(self) -> dict[str, Any]:
        mapping = self.model_dump(exclude_none=True, exclude={"columns"})
        if self.columns is not None:
            mapping["columns"] = {c.column: c.role for c in self.columns}
        return mapping


class MixOptions(StrictModel):
    """What one entry of `sources` adds to its source: how its rows map to ChatML and how many it gives."""

    alias: str | None = Field(
        default=None, pattern=SOURCE_NAME,
        description="the source's name in provenance, results and drop examples (`name` is taken: a Hub source's "
                    "dataset); 1–64 letters, digits, '_', '.', '-'. Default: derived from the source (the last part "
                    "of the dataset or directory name, the artifact id or the referenced step), made unique within "
                    "the job with '-2', '-3', …")
    shape: ShapeName | ColumnMapping | None = Field(default=None, description="default: the job's `shape`")
    system_prompt: str | None = Field(default=None, max_length=20_000, description="default: the job's")
    system_prompt_mode: Literal["add", "replace"] | None = Field(default=None, description="default: the job's")
    max_examples: RowCount | None = Field(
        default=None, description="take at most this many rows from this source: its first usable (valid, not "
                                  "duplicate, fitting) rows in source order; reading stops there")
    weight: float | None = Field(
        default=None, gt=0, le=1_000_000,
        description="this source's share of the mixed output: source i gives weight_i / sum(weights) of the output "
                    "rows, sampled at random (seed) without repeats from its usable rows. The output is as large as "
                    "the scarcest source allows (and at most the job's max_examples). Give a weight to every source "
                    "or to none; without weights every usable row of every source is kept")


class HubMixSource(HubSource, MixOptions):
    """A Hub dataset as one source of a mix."""


class LocalMixSource(LocalSource, MixOptions):
    """A local directory as one source of a mix."""


class FileMixSource(FileSource, MixOptions):
    """An upload or an earlier job's artifact (e.g. a generation job's ChatML output) as one source of a mix."""


MixSource = Annotated[HubMixSource | LocalMixSource | FileMixSource, Field(discriminator="type")]


def derived_name(source: HubSource | LocalSource | FileSource) -> str:
    """A source's default name: the dataset's or directory's last part, the artifact id, or the referenced step."""
    if isinstance(source, HubSource):
        base = source.name.rsplit("/", 1)[-1]
    elif isinstance(source, LocalSource):
        base = source.path.rstrip("/").rsplit("/", 1)[-1]
    elif isinstance(source.artifact_id, OutputRef):
        base = source.artifact_id.ref.split(".", 1)[0]
    else:
        base = source.artifact_id
    base = re.sub(r"[^A-Za-z0-9_.-]", "-", base).lstrip("_.-")[:56]
    return base or source.type


class DatasetSpec(StrictModel):
    source: Source | None = Field(default=None, description="one source; or give `sources` to mix several")
    sources: list[MixSource] | None = Field(
        default=None, min_length=1, max_length=MAX_SOURCES,
        description=f"1–{MAX_SOURCES} sources mixed into one ChatML dataset: each is converted and validated on "
                    "its own, then duplicates are removed across sources (the first source keeps a repeated "
                    "conversation), rows are taken by `weight`, shuffled with `seed` and split")
    shape: ShapeName | ColumnMapping = "auto"
    system_prompt: str | None = Field(default=None, max_length=20_000)
    system_prompt_mode: Literal["add", "replace"] = "add"
    dedupe: bool = True
    min_turns: int = Field(default=1, ge=1, le=1000, description="minimum assistant turns")
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000,
                                   description="drop longer rendered rows (or cut them, with `truncate`)")
    truncate: bool = Field(
        default=False,
        description="with max_tokens: keep an over-long conversation by cutting whole turns from its end, so it "
                    "still ends on an assistant turn and keeps at least min_turns of them; rows that cannot fit "
                    "even so are dropped as too_long. result.truncated counts the cut rows")
    train_on: Literal["all_assistant", "last_assistant"] = "all_assistant"
    enable_thinking: bool = True
    shuffle: bool = True
    seed: Seed = 0
    validation_fraction: float | None = Field(default=None, gt=0, lt=1)
    validation_rows: RowCount | None = None
    max_examples: RowCount | None = Field(
        default=None,
        description="at most this many output rows (train + validation). Reading stops once there are enough: "
                    "each source is read until it has max_examples usable rows (with weights, its share of them), "
                    "so the rows are a source's first usable ones, then shuffled")

    @model_validator(mode="after")
    def _check(self) -> DatasetSpec:
        if self.validation_fraction is not None and self.validation_rows is not None:
            raise ValueError("give validation_fraction or validation_rows, not both")
        if (self.source is None) == (self.sources is None):
            raise ValueError("give exactly one of `source` (one source) or `sources` (a list to mix)")
        if self.truncate and self.max_tokens is None:
            raise ValueError("truncate: set max_tokens too (the length to cut conversations down to)")
        if self.sources is not None:
            weighted = [s.weight is not None for s in self.sources]
            if any(weighted) and not all(weighted):
                missing = weighted.index(False)
                raise ValueError(f"sources[{missing}].weight: give a weight to every source or to none")
            self._name_sources(self.sources)
        return self

    @staticmethod
    def _name_sources(sources: list[Any]) -> None:
        taken: dict[str, int] = {}
        for i, s in enumerate(sources):
            if s.alias is not None:
                if s.alias in taken:
                    raise ValueError(f"sources[{i}].alias: '{s.alias}' is already the alias of sources"
                                     f"[{taken[s.alias]}]; give each source its own")
                taken[s.alias] = i
        for i, s in enumerate(sources):
            if s.alias is None:
                base = alias = derived_name(s)
                n = 1
                while alias in taken:
                    n += 1
                    alias = f"{base}-{n}"
                s.alias = alias
                taken[alias] = i

    def shape_for_converter(self) -> str | dict[str, Any]:
        return self.shape.for_converter() if isinstance(self.shape, ColumnMapping) else self.shape
