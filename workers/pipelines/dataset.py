"""Dataset jobs: rows from a source → ChatML → validated, cleaned, split → JSONL artifacts (docs/architecture.md, "Pipelines and resumability").

Memory stays flat as rows grow: kept rows are streamed to a staging file; only their offsets, row numbers,
token counts and 8-byte dedupe hashes stay in memory (32 bytes a row, in arrays). A re-run (redelivery) starts over and replaces its outputs
atomically, so no one ever sees a partial artifact.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from app.chat import (
    ShapeError,
    UnknownShapeError,
    apply_system_prompt,
    converter_for,
    count_planned,
    detect_shape,
    normalize_key,
    plan_batch,
    validate_conversation,
)
from app.db import session_scope
from app.schemas.datasets import DatasetSpec
from app.services import artifacts as artifacts_service
from workers.errors import JobFailed, RetryJob
from workers.lease import JobContext
from workers.sources import Row, SourceError, iter_file_rows, iter_hub_rows, iter_local_dataset_rows

BATCH = 512
EXAMPLES_PER_REASON = 5
PROGRESS_SECONDS = 1.0
EVENT_SECONDS = 10.0


class Drops:
    """Dropped rows counted by reason, with a few examples each (row number, field, message)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.examples: dict[str, list[dict[str, Any]]] = {}

    def add(self, reason: str, row: int, field: str, message: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append({"row": row, "field": field, "message": message})

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def open_source(spec: DatasetSpec, ctx: JobContext) -> Iterator[Row]:
    source = spec.source
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
            raise JobFailed("bad_path", f"source.path '{source.path}' points outside the local datasets directory.")
        return iter_local_dataset_rows(path, split=source.split, config=source.config)
    with session_scope() as session:
        path, meta = artifacts_service.path_of(session, team_id=ctx.team_id, artifact_id=source.artifact_id)
    fmt = "jsonl" if meta["format"] == "chatml_jsonl" else meta["format"]
    return iter_file_rows(path, fmt)


def _detect(spec: DatasetSpec, head: list[Row], ctx: JobContext) -> Any:
    shape = spec.shape_for_converter()
    if shape == "auto":
        try:
            shape = detect_shape([row for _, row in head])
        except UnknownShapeError as exc:
            raise JobFailed("unknown_shape", f"{exc} Set spec.shape to a shape or a column mapping.") from None
        ctx.event("shape_detected", {"shape": shape, "from_rows": len(head)})
    return shape


def run(spec_dict: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    spec = DatasetSpec.model_validate(spec_dict)
    workdir = artifacts_service.local_path(f"{ctx.team_id}/{ctx.job_id}")
    artifacts_service.private_dir(workdir)
    try:
        return _run(spec, ctx, workdir)
    except SourceError as exc:
        if exc.retryable:
            raise RetryJob(exc.code, exc.message) from None
        details = {"line": exc.line} if exc.line is not None else {}
        raise JobFailed(exc.code, exc.message, details=details) from None


def _run(spec: DatasetSpec, ctx: JobContext, workdir: Path) -> dict[str, Any]:
    rows = open_source(spec, ctx)
    head = list(islice(rows, 20))
    shape = _detect(spec, head, ctx)
    convert = converter_for(shape)
    drops = Drops()
    # 32 bytes per kept row; duplicates are found at the end by sorting the hashes (no set of objects).
    offsets, numbers, hashes = array("Q"), array("Q"), array("q")
    tokens, trained = array("I"), array("I")
    staging_path = workdir / ".staging.jsonl"
    read = 0
    last_progress = last_event = time.monotonic()
    all_rows = _chain(head, rows)

    written = 0

    def keep(candidates: list[tuple[int, list[Any]]], counts: list[tuple[int, int]]) -> None:
        nonlocal written
        lines = []
        for (number, messages), (n, n_trained) in zip(candidates, counts, strict=True):
            if spec.max_tokens is not None and n > spec.max_tokens:
                drops.add("too_long", number, "messages", f"renders to {n} tokens, over max_tokens={spec.max_tokens}")
                continue
            if spec.dedupe:
                # 64-bit hash of the normalized conversation; equal keys are resolved at the end of the job
                hashes.append(hash(normalize_key(messages)))
            line = orjson.dumps({"messages": messages}, option=orjson.OPT_APPEND_NEWLINE)
            numbers.append(number)
            offsets.append(written)
            written += len(line)
            lines.append(line)
            tokens.append(n)
            trained.append(n_trained)
        staging.write(b"".join(lines))

    # Tokenizing batch k (tiktoken releases the GIL) overlaps with parsing and validating batch k+1.
    with (open(staging_path, "wb", opener=artifacts_service.private_opener) as staging,
          ThreadPoolExecutor(1, thread_name_prefix="tokenize") as encoder):
        pending: tuple[list[tuple[int, list[Any]]], Future[list[tuple[int, int]]]] | None = None
        while True:
            batch = list(islice(all_rows, BATCH))
            if not batch:
                break
            read += len(batch)
            candidates = _valid(spec, convert, batch, drops)
            planned = plan_batch([m for _, m in candidates], train_on=spec.train_on,
                                 enable_thinking=spec.enable_thinking)
            future = encoder.submit(count_planned, planned)
            if pending is not None:
                keep(pending[0], pending[1].result())
            pending = (candidates, future)
            now = time.monotonic()
            if now - last_progress >= PROGRESS_SECONDS:
                milestone = now - last_event >= EVENT_SECONDS
                ctx.progress(read, None, "rows", event=milestone, extra={"kept": len(offsets)})
                last_progress = now
                last_event = now if milestone else last_event
        if pending is not None:
            keep(pending[0], pending[1].result())

    kept = _without_duplicates(hashes, numbers, drops) if spec.dedupe else np.arange(len(offsets))
    ctx.progress(read, read, "rows", event=True, extra={"kept": len(kept)})
    if not len(kept):
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(drops.counts.items())) or "the source is empty"
        raise JobFailed("no_rows", f"No row survived validation ({read} read; dropped {reasons}). "
                        "See result.dropped examples, or fix spec.shape / the source.",
                        details={"dropped": drops.counts, "examples": drops.examples})
    result = _write_splits(spec, ctx, staging_path, kept, offsets, tokens, trained)
    staging_path.unlink(missing_ok=True)
    result.update({"shape": shape if isinstance(shape, str) else "mapping", "rows_in": read,
                   "rows_out": sum(s["rows"] for s in result["splits"].values()),
                   "dropped": drops.counts, "dropped_total": drops.total, "drop_examples": drops.examples})
    return result


def _valid(spec: DatasetSpec, convert: Any, batch: list[Row], drops: Drops) -> list[tuple[int, list[Any]]]:
    """Rows converted to ChatML that pass validation; the others are counted in `drops`."""
    out: list[tuple[int, list[Any]]] = []
    for number, row in batch:
        try:
            messages: list[Any] = convert(row)
        except ShapeError as exc:
            drops.add("bad_shape", number, exc.field, exc.message)
            continue
        if spec.system_prompt is not None:
            messages = list(apply_system_prompt(messages, spec.system_prompt, spec.system_prompt_mode))
        problem = validate_conversation(messages, min_turns=spec.min_turns)
        if problem is not None:
            drops.add(str(problem.reason), number, problem.field, problem.message)
            continue
        out.append((number, messages))
    return out


def _chain(head: list[Row], rest: Iterator[Row]) -> Iterator[Row]:
    yield from head
    yield from rest


def _without_duplicates(hashes: array, numbers: array, drops: Drops) -> np.ndarray:
    """Indices of kept rows minus later repeats of the same conversation (a stable sort keeps the first)."""
    keys = np.frombuffer(hashes, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    ranked = keys[order]
    repeats = np.sort(order[1:][ranked[1:] == ranked[:-1]])
    if len(repeats):
        drops.counts["duplicate"] = len(repeats)
        drops.examples["duplicate"] = [
            {"row": int(numbers[int(i)]), "field": "messages", "message": "the same conversation as an earlier row"}
            for i in repeats[:EXAMPLES_PER_REASON]
        ]
    keep = np.ones(len(keys), dtype=bool)
    keep[repeats] = False
    return np.flatnonzero(keep)


def _split_order(spec: DatasetSpec, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(spec.seed).permutation(kept) if spec.shuffle else kept
    if spec.max_examples is not None:
        order = order[: spec.max_examples]
    if spec.validation_rows is not None:
        n_val = min(spec.validation_rows, len(order) - 1)
    elif spec.validation_fraction is not None:
        n_val = min(int(round(len(order) * spec.validation_fraction)), len(order) - 1)
    else:
        n_val = 0
    return order[n_val:], order[:n_val]


def _token_stats(idx: np.ndarray, tokens: np.ndarray, trained: np.ndarray) -> dict[str, Any]:
    t = tokens[idx]
    return {"tokens": int(t.sum()), "trainable_tokens": int(trained[idx].sum()),
            "token_distribution": {"min": int(t.min()), "p50": int(np.percentile(t, 50)),
                                   "p95": int(np.percentile(t, 95)), "max": int(t.max())}}


def _write_splits(spec: DatasetSpec, ctx: JobContext, staging_path: Path, kept: np.ndarray, offsets: array,
                  tokens: array, trained: array) -> dict[str, Any]:
    train_idx, val_idx = _split_order(spec, kept)
    tok, trn = np.frombuffer(tokens, dtype=np.uint32).astype(np.int64), np.frombuffer(trained, dtype=np.uint32)
    trn = trn.astype(np.int64)
    outputs = []
    splits: dict[str, Any] = {}
    with open(staging_path, "rb") as staging:
        for name, idx in (("train", train_idx), ("validation", val_idx)):
            if len(idx) == 0:
                continue
            writer = ctx.artifact_writer(f"{name}.jsonl")
            try:
                for i in idx:
                    staging.seek(offsets[int(i)])
                    writer.write(staging.readline())
                ctx.check()
                writer.commit()
            except BaseException:
                writer.abort()
                raise
            stats = {"rows": len(idx), **_token_stats(idx, tok, trn)}
            outputs.append({"kind": "dataset", "name": f"{name}.jsonl", "writer": writer, "fmt": "chatml_jsonl",
                            "rows": len(idx), "meta": {"split": name, **stats}})
            splits[name] = stats
    ids = ctx.publish_artifacts(outputs)
    for stats, artifact_id in zip(splits.values(), ids, strict=True):
        stats["artifact_id"] = artifact_id
    return {"splits": splits, "artifacts": ids,
            "train_artifact": splits["train"]["artifact_id"],
            "validation_artifact": splits.get("validation", {}).get("artifact_id")}
