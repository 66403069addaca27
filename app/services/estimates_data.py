"""Estimates of dataset and generation jobs (the common shape and the reasoning: app/services/estimates.py).

Dataset: rows and bytes come from the source artifacts' rows. Tokens need the rows converted, validated and
rendered, which is the job itself; a dry run does it on the first `SAMPLE_ROWS` rows of a JSONL upload (counting
all its rows) and scales the mean, so its token figure is an approximation; a created job records rows and bytes.

Generation: items are known from the spec (or the source artifact's row count). Prompt tokens are item 0's
prompt rendered as the worker renders it and counted with the Qwen3 tokenizer (the provider's tokenizer differs
a little), × items; completion tokens are `max_tokens` (an upper bound) or `TUNEQ_ESTIMATE_COMPLETION_TOKENS`.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy.orm import Session

from app.chat import (
    UnknownShapeError,
    apply_system_prompt,
    converter_for,
    count_batch,
    detect_shape,
    render_prompt,
    validate_conversation,
)
from app.chat.shapes import ShapeError
from app.schemas.common import OutputRef
from app.services import artifacts as artifacts_service
from app.services import generation as generation_service
from app.services.auth import Caller
from app.services.estimates import artifact_info, base, not_yet
from app.services.templates import TemplateError
from app.settings import Settings

SAMPLE_ROWS = 1000  # rows of an upload converted and rendered by a dataset dry run
JSONL = ("jsonl", "chatml_jsonl")


# ---- dataset ----------------------------------------------------------------------------------------------------


def _sources(spec: Any) -> list[Any]:
    many = getattr(spec, "sources", None)
    return list(many) if many else [spec.source]


def dataset(session: Session, caller: Caller, spec: Any, settings: Settings, *, dry_run: bool) -> dict[str, Any]:
    out = base(False, rows=0, bytes=0, tokens=None, sources=[])
    mean_tokens: list[tuple[float, int]] = []  # (mean tokens per valid row, rows) per sampled source
    for i, source in enumerate(_sources(spec)):
        field = "source" if getattr(spec, "sources", None) is None else f"sources[{i}]"
        one = _dataset_source(session, caller, spec, source, field, settings, dry_run, out["notes"])
        out["sources"].append(one)
        for key in ("rows", "bytes"):
            out[key] = None if out[key] is None or one.get(key) is None else out[key] + one[key]
        if one.get("mean_tokens") is not None and one.get("rows"):
            mean_tokens.append((one["mean_tokens"], one["rows"]))
    if out["rows"] is not None:
        cap = getattr(spec, "max_examples", None)
        out["rows_out_at_most"] = min(out["rows"], cap) if cap is not None else out["rows"]
        if mean_tokens and len(mean_tokens) == len(out["sources"]):
            mean = sum(m * r for m, r in mean_tokens) / sum(r for _, r in mean_tokens)
            out["tokens"] = round(mean * out["rows_out_at_most"])
            out["notes"].append("tokens: the mean rendered length of the sampled rows × the rows out, before "
                                "dedupe and filters (an approximation).")
    out["cost_usd"] = 0.0  # dataset jobs call no paid service
    return out


def _dataset_source(session: Session, caller: Caller, spec: Any, source: Any, field: str, settings: Settings,
                    dry_run: bool, notes: list[str]) -> dict[str, Any]:
    if source.type != "artifact":
        notes.append(f"spec.{field}: a {source.type} source's size is known only when the job reads it.")
        return {"type": source.type, "rows": None, "bytes": None}
    if isinstance(source.artifact_id, OutputRef):
        notes.append(not_yet(f"{field}.artifact_id", source.artifact_id))
        return {"type": "artifact", "rows": None, "bytes": None}
    info = artifact_info(session, caller, source.artifact_id)
    if info is None:
        return {"type": "artifact", "rows": None, "bytes": None}
    one: dict[str, Any] = {"type": "artifact", "artifact_id": source.artifact_id, "format": info.format,
                           "rows": info.rows, "bytes": info.bytes}
    if not dry_run:
        if info.rows is None:
            notes.append(f"spec.{field}: an upload's rows are counted by a dry run (?dry_run=true).")
        return one
    if info.format not in JSONL or (info.bytes or 0) > settings.estimate_scan_max_bytes:
        if info.rows is None:
            notes.append(f"spec.{field}: rows of a {info.format} file are counted when the job reads it.")
        return one
    path = artifacts_service.local_path(info.uri)
    limit = settings.preview_max_row_bytes
    sample: list[Any] = []
    rows = 0
    try:
        for _, line, _ in artifacts_service.iter_bounded_rows(path, limit):
            rows += 1
            if len(sample) < SAMPLE_ROWS and line is not None:
                try:
                    sample.append(orjson.loads(line))
                except orjson.JSONDecodeError:
                    pass
    except OSError:
        notes.append(f"spec.{field}: the file could not be read here; the job will say why if it cannot either.")
        return one
    one["rows"] = rows
    one["mean_tokens"] = _mean_tokens(spec, source, sample)
    return one


def _mean_tokens(spec: Any, source: Any, sample: list[Any]) -> float | None:
    """Mean rendered tokens of the sampled rows that convert and validate as the job would."""
    shape = getattr(source, "shape", None) or spec.shape
    shape = shape.model_dump(exclude_none=True) if hasattr(shape, "model_dump") else shape
    if isinstance(shape, dict) and "columns" in shape:
        shape = {**shape, "columns": {c["column"]: c["role"] for c in shape["columns"]}}
    rows = [r for r in sample if isinstance(r, dict)]
    try:
        convert = converter_for(detect_shape(rows) if shape == "auto" else shape)
    except (UnknownShapeError, ValueError):
        return None
    system = getattr(source, "system_prompt", None) or spec.system_prompt
    conversations = []
    for row in rows:
        try:
            messages = list(convert(row))
        except (ShapeError, ValueError, TypeError, KeyError, AttributeError):
            continue
        if system is not None:
            messages = list(apply_system_prompt(messages, system, spec.system_prompt_mode))
        if validate_conversation(messages, min_turns=spec.min_turns) is None:
            conversations.append(messages)
    if not conversations:
        return None
    counts = count_batch(conversations, train_on=spec.train_on, enable_thinking=spec.enable_thinking)
    return sum(n for n, _ in counts) / len(counts)


# ---- generation -------------------------------------------------------------------------------------------------


def generation(session: Session, caller: Caller, spec: Any, settings: Settings, *, dry_run: bool
               ) -> dict[str, Any]:
    resolved = spec.resolved()
    out = base(False, items=None, prompt_tokens_per_item=None, completion_tokens_per_item=None,
               prompt_tokens=None, completion_tokens=None,
               max_cost_usd=spec.max_cost_usd if spec.max_cost_usd is not None
               else settings.generation_default_max_cost_usd)
    if spec.source_artifact is None:
        out["items"] = generation_service.item_count(spec)
        out["prompt_tokens_per_item"] = _prompt_tokens(spec, resolved)
    elif isinstance(spec.source_artifact, OutputRef):
        out["notes"].append(not_yet("source_artifact", spec.source_artifact))
    else:
        info = artifact_info(session, caller, spec.source_artifact)
        out["items"] = info.rows if info is not None else None
        out["notes"].append("Prompt tokens of a source artifact's rows are counted when the job renders them.")
    completion = resolved.get("max_tokens")
    if completion is None:
        completion = settings.estimate_completion_tokens
        out["notes"].append(f"No max_tokens: completions are assumed to be {completion} tokens "
                            "(TUNEQ_ESTIMATE_COMPLETION_TOKENS).")
    else:
        out["notes"].append("Completion tokens are max_tokens per item: an upper bound.")
    out["completion_tokens_per_item"] = completion
    items = out["items"]
    if items is not None:
        out["completion_tokens"] = completion * items
        if out["prompt_tokens_per_item"] is not None:
            out["prompt_tokens"] = out["prompt_tokens_per_item"] * items
            out["notes"].append("Prompt tokens: item 0's prompt (Qwen3 tokenizer) × items.")
        if spec.requests_per_second:
            out["duration_seconds"] = round(items / spec.requests_per_second, 1)
    _price_generation(out, spec.model, settings)
    return out


def _prompt_tokens(spec: Any, resolved: dict[str, Any]) -> int | None:
    try:
        values = generation_service.item_vars(spec, resolved, 0)
        messages = []
        if resolved["system"]:
            system = generation_service.compile_template(resolved["system"], "spec.system")
            messages.append({"role": "system", "content": generation_service.render(system, values)})
        prompt = generation_service.compile_template(resolved["prompt"])
        messages.append({"role": "user", "content": generation_service.render(prompt, values)})
    except (TemplateError, ValueError):
        return None
    return len(render_prompt(messages))


def model_prices(settings: Settings, model: str) -> tuple[float, float] | None:
    """(USD per million prompt tokens, per million completion tokens) of a generation model: the server's table
    (TUNEQ_GENERATION_PRICES, the one the budget uses). The provider's model list, which the workers may also
    price from, is not fetched at submit."""
    price = settings.generation_prices.get(model)
    return None if price is None else (price.prompt, price.completion)


def _price_generation(out: dict[str, Any], model: str, settings: Settings) -> None:
    prices = model_prices(settings, model)
    if prices is None:
        out["notes"].append(f"No price for {model} in TUNEQ_GENERATION_PRICES: cost_usd is null (the job still "
                            "stops at max_cost_usd).")
        return
    if out["prompt_tokens"] is None and out["completion_tokens"] is None:
        return
    cost = ((out["prompt_tokens"] or 0) * prices[0] + (out["completion_tokens"] or 0) * prices[1]) / 1e6
    out["cost_usd"] = round(cost, 6)
    if out["max_cost_usd"] is not None and cost > out["max_cost_usd"]:
        out["notes"].append(f"The estimate is over max_cost_usd={out['max_cost_usd']}: the job would stop there.")
