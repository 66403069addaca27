"""A dataset job's inputs: one per source, with what each needs to be read, converted and capped.

The single `source` field is the one-entry case of `sources`: the job's own `shape`, `system_prompt` and
`max_examples` apply to it. With `sources`, an entry's own values win over the job's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from app.chat import UnknownShapeError, detect_shape
from app.db import session_scope
from app.schemas.datasets import ColumnMapping, DatasetSpec, derived_name
from app.services import artifacts as artifacts_service
from workers.errors import JobFailed
from workers.lease import JobContext
from workers.sources import Row, iter_file_rows, iter_hub_rows, iter_local_dataset_rows


@dataclass
class Input:
    index: int
    name: str
    source: Any  # HubSource | LocalSource | FileSource (or their `sources` entries)
    shape: str | dict[str, Any]
    system_prompt: str | None
    system_prompt_mode: str
    limit: int | None  # usable rows to take; reading stops there
    weight: float | None
    field: str  # how the spec names it: "source" or "sources[2]"


def _shape(shape: Any) -> str | dict[str, Any]:
    return shape.for_converter() if isinstance(shape, ColumnMapping) else shape


def inputs_of(spec: DatasetSpec) -> list[Input]:
    if spec.sources is None:
        assert spec.source is not None
        return [Input(0, derived_name(spec.source), spec.source, _shape(spec.shape), spec.system_prompt,
                      spec.system_prompt_mode, spec.max_examples, None, "source")]
    total = sum(s.weight or 0 for s in spec.sources)
    out = []
    for i, s in enumerate(spec.sources):
        limit = spec.max_examples
        if limit is not None and s.weight is not None:
            limit = max(1, math.ceil(limit * s.weight / total))  # its share of the job's rows is all it can give
        if s.max_examples is not None:
            limit = s.max_examples if limit is None else min(limit, s.max_examples)
        out.append(Input(
            i, s.alias or derived_name(s), s, _shape(s.shape if s.shape is not None else spec.shape),
            s.system_prompt if s.system_prompt is not None else spec.system_prompt,
            s.system_prompt_mode or spec.system_prompt_mode, limit, s.weight, f"sources[{i}]"))
    return out


def open_input(inp: Input, ctx: JobContext) -> Iterator[Row]:
    source = inp.source
    settings = ctx.settings
    if source.type == "hub":
        token = settings.hf_token.get_secret_value() if settings.hf_token else None
        return iter_hub_rows(source.name, config=source.config, split=source.split, revision=source.revision,
                             token=token)
    if source.type == "local":
        base = settings.local_datasets_dir
        if base is None:
            raise JobFailed("local_sources_disabled", "Local dataset sources are disabled on this server.")
        path = (base / source.path).resolve()
        if not path.is_relative_to(base.resolve()):
            raise JobFailed("bad_path", f"{inp.field}.path '{source.path}' points outside the local datasets "
                                        f"directory.")
        return iter_local_dataset_rows(path, split=source.split, config=source.config)
    with session_scope() as session:
        path, meta = artifacts_service.path_of(session, team_id=ctx.team_id, artifact_id=source.artifact_id)
    fmt = "jsonl" if meta["format"] == "chatml_jsonl" else meta["format"]
    return iter_file_rows(path, fmt)


def detect(inp: Input, head: list[Row], ctx: JobContext, *, several: bool) -> str | dict[str, Any]:
    if inp.shape != "auto":
        return inp.shape
    try:
        shape = detect_shape([row for _, row in head])
    except UnknownShapeError as exc:
        where = f"spec.{inp.field}.shape" if several else "spec.shape"
        raise JobFailed("unknown_shape", f"{f'Source {inp.name!r}: ' if several else ''}{exc} Set {where} to a "
                                         f"shape or a column mapping.") from None
    ctx.event("shape_detected", {"shape": shape, "from_rows": len(head), **({"source": inp.name} if several else {})})
    return shape
