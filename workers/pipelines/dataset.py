"""Dataset jobs: rows from one or more sources → ChatML → validated, cleaned, mixed, split → JSONL artifacts
(docs/architecture.md, "Pipelines and resumability").

Memory stays flat as rows grow: kept rows are streamed to a staging file; only their offsets, row numbers, source,
token counts and 8-byte dedupe hashes stay in memory (34 bytes a row, in arrays). A re-run (redelivery) starts
over and replaces its outputs atomically, so no one ever sees a partial artifact.

Each split `NAME.jsonl` has a side file `NAME.provenance.jsonl` (artifact kind `provenance`): line k names the
source and the row number (as `SourceError.line` numbers it, see workers/sources/__init__.py) of the split's row
k. A side file rather than a field in the split, so training and evaluation read the split unchanged; rather than
the split artifact's meta, because a split can hold millions of rows and meta is one SQL value.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from app.chat import (
    ShapeError,
    apply_system_prompt,
    converter_for,
    count_batch,
    count_planned,
    normalize_key,
    plan_batch,
    validate_conversation,
)
from app.schemas.datasets import DatasetSpec
from app.services import artifacts as artifacts_service
from workers.errors import JobFailed, RetryJob
from workers.lease import JobContext
from workers.pipelines.dataset_inputs import Input, detect, inputs_of, open_input
from workers.pipelines.mixing import split_order
from workers.sources import Row, SourceError

BATCH = 512
HEAD = 20
EXAMPLES_PER_REASON = 5
PROGRESS_SECONDS = 1.0
EVENT_SECONDS = 10.0

Candidate = tuple[int, list[Any]]  # (row number, messages)


class Drops:
    """Dropped rows counted by reason, with a few examples each (source, row number, field, message)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.examples: dict[str, list[dict[str, Any]]] = {}

    def add(self, reason: str, row: int, field: str, message: str, source: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append({"source": source, "row": row, "field": field, "message": message})

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class _Taking:
    """How far one input is towards its `limit` of usable rows."""

    inp: Input
    shape: Any = None
    rows_in: int = 0
    taken: int = 0
    truncated: int = 0
    seen: set[int] = field(default_factory=set)
    earlier: np.ndarray | None = None  # sorted hashes of the rows kept from earlier inputs

    @property
    def full(self) -> bool:
        return self.inp.limit is not None and self.taken >= self.inp.limit

    def is_new(self, key: int) -> bool:
        if key in self.seen:
            return False
        if self.earlier is not None:
            i = int(np.searchsorted(self.earlier, key))
            if i < len(self.earlier) and self.earlier[i] == key:
                return False
        self.seen.add(key)
        return True


def run(spec_dict: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    spec = DatasetSpec.model_validate(spec_dict)
    workdir = artifacts_service.local_path(f"{ctx.team_id}/{ctx.job_id}")
    artifacts_service.private_dir(workdir)
    job = _Job(spec, ctx, workdir)
    try:
        return job.run()
    except SourceError as exc:
        message = exc.message if job.current is None else f"Source {job.current!r}: {exc.message}"
        if exc.retryable:
            raise RetryJob(exc.code, message) from None
        details = {"line": exc.line} if exc.line is not None else {}
        raise JobFailed(exc.code, message, details=details) from None


class _Job:
    def __init__(self, spec: DatasetSpec, ctx: JobContext, workdir: Path) -> None:
        self.spec, self.ctx = spec, ctx
        self.inputs = inputs_of(spec)
        self.several = spec.sources is not None
        self.current: str | None = None  # with several sources, the one being read (a source error names it)
        self.drops = Drops()
        # 34 bytes per kept row; duplicates are found at the end by sorting the hashes (no set of objects).
        self.offsets, self.numbers, self.hashes = array("Q"), array("Q"), array("q")
        self.tokens, self.trained, self.sources = array("I"), array("I"), array("H")
        self.staging_path = workdir / ".staging.jsonl"
        self.written = self.read = 0
        self.last_progress = self.last_event = time.monotonic()

    def run(self) -> dict[str, Any]:
        spec, ctx = self.spec, self.ctx
        with (open(self.staging_path, "wb", opener=artifacts_service.private_opener) as staging,
              ThreadPoolExecutor(1, thread_name_prefix="tokenize") as encoder):
            takings = [self._read_input(inp, encoder, staging) for inp in self.inputs]
        self.current = None
        drops = self.drops
        kept = self._without_duplicates() if spec.dedupe else np.arange(len(self.offsets))
        ctx.progress(self.read, self.read, "rows", event=True, extra={"kept": len(kept)})
        if not len(kept):
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(drops.counts.items())) or "the source is empty"
            raise JobFailed("no_rows", f"No row survived validation ({self.read} read; dropped {reasons}). "
                            "See result.dropped examples, or fix spec.shape / the source.",
                            details={"dropped": drops.counts, "examples": drops.examples})
        source_of = np.frombuffer(self.sources, dtype=np.uint16)
        usable = np.bincount(source_of[kept], minlength=len(self.inputs)).tolist()
        weights = [inp.weight or 0.0 for inp in self.inputs] if self.inputs[0].weight is not None else None
        if weights is not None and 0 in usable:
            empty = self.inputs[usable.index(0)]
            raise JobFailed("empty_source", f"Source {empty.name!r} (spec.{empty.field}) has no usable row, so it "
                            "cannot give its weight's share of the mix; fix that source or remove its weight.",
                            details={"dropped": drops.counts, "examples": drops.examples})
        train_idx, val_idx, taken = split_order(spec, kept, source_of, len(self.inputs), weights)
        result = self._write_splits(train_idx, val_idx)
        self.staging_path.unlink(missing_ok=True)
        shapes = {t.shape if isinstance(t.shape, str) else "mapping" for t in takings}
        result.update({
            "shape": shapes.pop() if len(shapes) == 1 else "mixed", "rows_in": self.read,
            "rows_out": sum(s["rows"] for s in result["splits"].values()),
            "dropped": drops.counts, "dropped_total": drops.total, "drop_examples": drops.examples,
            "truncated": sum(t.truncated for t in takings),
            "sources": [{"name": t.inp.name, "shape": t.shape if isinstance(t.shape, str) else "mapping",
                         "rows_in": t.rows_in, "usable": usable[i], "rows_out": taken[i], "truncated": t.truncated,
                         **({"weight": t.inp.weight} if t.inp.weight is not None else {})}
                        for i, t in enumerate(takings)],
        })
        return result

    def _read_input(self, inp: Input, encoder: ThreadPoolExecutor, staging: IO[bytes]) -> _Taking:
        spec = self.spec
        self.current = inp.name if self.several else None
        state = _Taking(inp)
        if inp.limit is not None and spec.dedupe and len(self.hashes):
            state.earlier = np.sort(np.frombuffer(self.hashes, dtype=np.int64))
        rows = open_input(inp, self.ctx)
        head = list(islice(rows, HEAD))
        state.shape = detect(inp, head, self.ctx, several=self.several)
        convert = converter_for(state.shape)
        all_rows = _chain(head, rows)
        # Tokenizing batch k (tiktoken releases the GIL) overlaps with parsing and validating batch k+1.
        pending: tuple[list[Candidate], Future[list[tuple[int, int]]]] | None = None
        try:
            while not state.full:
                batch = list(islice(all_rows, BATCH))
                if not batch:
                    break
                state.rows_in += len(batch)
                self.read += len(batch)
                candidates = self._valid(inp, convert, batch)
                planned = plan_batch([m for _, m in candidates], train_on=spec.train_on,
                                     enable_thinking=spec.enable_thinking)
                future = encoder.submit(count_planned, planned)
                if pending is not None:
                    self._keep(state, pending[0], pending[1].result(), staging)
                pending = (candidates, future)
                self._report()
            if pending is not None:
                self._keep(state, pending[0], pending[1].result(), staging)
        finally:
            all_rows.close()  # stops the reader (and closes its file) when the input is full
        return state

    def _report(self) -> None:
        now = time.monotonic()
        if now - self.last_progress >= PROGRESS_SECONDS:
            milestone = now - self.last_event >= EVENT_SECONDS
            self.ctx.progress(self.read, None, "rows", event=milestone, extra={"kept": len(self.offsets)})
            self.last_progress = now
            self.last_event = now if milestone else self.last_event

    def _keep(self, state: _Taking, candidates: list[Candidate], counts: list[tuple[int, int]],
              staging: IO[bytes]) -> None:
        spec, inp = self.spec, state.inp
        lines = []
        for (number, messages), (n, n_trained) in zip(candidates, counts, strict=True):
            if state.full:
                break
            if spec.max_tokens is not None and n > spec.max_tokens:
                cut = _truncate(spec, messages) if spec.truncate else None
                if cut is None:
                    self.drops.add("too_long", number, "messages",
                                   f"renders to {n} tokens, over max_tokens={spec.max_tokens}", inp.name)
                    continue
                messages, n, n_trained = cut
                state.truncated += 1
            if spec.dedupe:
                # 64-bit hash of the normalized conversation; equal keys are resolved at the end of the job
                key = hash(normalize_key(messages))
                self.hashes.append(key)
                if inp.limit is None or state.is_new(key):
                    state.taken += 1
            else:
                state.taken += 1
            line = orjson.dumps({"messages": messages}, option=orjson.OPT_APPEND_NEWLINE)
            self.numbers.append(number)
            self.offsets.append(self.written)
            self.sources.append(inp.index)
            self.written += len(line)
            lines.append(line)
            self.tokens.append(n)
            self.trained.append(n_trained)
        staging.write(b"".join(lines))

    def _valid(self, inp: Input, convert: Any, batch: list[Row]) -> list[Candidate]:
        """Rows converted to ChatML that pass validation; the others are counted in `drops`."""
        out: list[Candidate] = []
        for number, row in batch:
            try:
                messages: list[Any] = convert(row)
            except ShapeError as exc:
                self.drops.add("bad_shape", number, exc.field, exc.message, inp.name)
                continue
            if inp.system_prompt is not None:
                messages = list(apply_system_prompt(messages, inp.system_prompt, inp.system_prompt_mode))  # type: ignore[arg-type]
            problem = validate_conversation(messages, min_turns=self.spec.min_turns)
            if problem is not None:
                self.drops.add(str(problem.reason), number, problem.field, problem.message, inp.name)
                continue
            out.append((number, messages))
        return out

    def _without_duplicates(self) -> np.ndarray:
        """Indices of kept rows minus later repeats of the same conversation (a stable sort keeps the first)."""
        keys = np.frombuffer(self.hashes, dtype=np.int64)
        order = np.argsort(keys, kind="stable")
        ranked = keys[order]
        repeats = np.sort(order[1:][ranked[1:] == ranked[:-1]])
        if len(repeats):
            self.drops.counts["duplicate"] = len(repeats)
            self.drops.examples["duplicate"] = [
                {"source": self.inputs[self.sources[int(i)]].name, "row": int(self.numbers[int(i)]),
                 "field": "messages", "message": "the same conversation as an earlier row"}
                for i in repeats[:EXAMPLES_PER_REASON]
            ]
        keep = np.ones(len(keys), dtype=bool)
        keep[repeats] = False
        return np.flatnonzero(keep)

    def _write_splits(self, train_idx: np.ndarray, val_idx: np.ndarray) -> dict[str, Any]:
        ctx = self.ctx
        tok = np.frombuffer(self.tokens, dtype=np.uint32).astype(np.int64)
        trn = np.frombuffer(self.trained, dtype=np.uint32).astype(np.int64)
        names = [orjson.dumps(inp.name) for inp in self.inputs]
        outputs = []
        splits: dict[str, Any] = {}
        with open(self.staging_path, "rb") as staging:
            for name, idx in (("train", train_idx), ("validation", val_idx)):
                if len(idx) == 0:
                    continue
                writer = ctx.artifact_writer(f"{name}.jsonl")
                origin = ctx.artifact_writer(f"{name}.provenance.jsonl")
                try:
                    for i in map(int, idx):  # one at a time: a list of a million ints is ~36 MB
                        staging.seek(self.offsets[i])
                        writer.write(staging.readline())
                        origin.write(b'{"source":%b,"row":%d}\n' % (names[self.sources[i]], self.numbers[i]))
                    ctx.check()
                    writer.commit()
                    origin.commit()
                except BaseException:
                    writer.abort()
                    origin.abort()
                    raise
                stats = {"rows": len(idx), **_token_stats(idx, tok, trn)}
                outputs.append({"kind": "dataset", "name": f"{name}.jsonl", "writer": writer, "fmt": "chatml_jsonl",
                                "rows": len(idx), "meta": {"split": name, **stats}})
                outputs.append({"kind": "provenance", "name": f"{name}.provenance.jsonl", "writer": origin,
                                "fmt": "jsonl", "rows": len(idx),
                                "meta": {"split": name, "of": f"{name}.jsonl",
                                         "sources": [inp.name for inp in self.inputs]}})
                splits[name] = stats
        ids = ctx.publish_artifacts(outputs)
        for n, stats in enumerate(splits.values()):
            stats["artifact_id"], stats["provenance_artifact"] = ids[2 * n], ids[2 * n + 1]
        return {"splits": splits, "artifacts": ids,
                "train_artifact": splits["train"]["artifact_id"],
                "validation_artifact": splits.get("validation", {}).get("artifact_id")}


def _truncate(spec: DatasetSpec, messages: list[Any]) -> tuple[list[Any], int, int] | None:
    """The longest prefix of `messages` ending on an assistant turn, with at least `min_turns` of them, that
    renders to at most `max_tokens` (binary search over the turn cuts, each counted by the renderer), or None."""
    assert spec.max_tokens is not None
    ends = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    lo, hi = spec.min_turns - 1, len(ends) - 2  # the whole conversation is already known to be too long
    best = None
    while lo <= hi:
        mid = (lo + hi) // 2
        prefix = messages[: ends[mid] + 1]
        n, n_trained = count_batch([prefix], train_on=spec.train_on, enable_thinking=spec.enable_thinking)[0]
        if n <= spec.max_tokens:
            best, lo = (prefix, n, n_trained), mid + 1
        else:
            hi = mid - 1
    return best


def _chain(head: list[Row], rest: Iterator[Row]) -> Generator[Row]:
    try:
        yield from head
        yield from rest
    finally:
        close = getattr(rest, "close", None)
        if close is not None:
            close()


def _token_stats(idx: np.ndarray, tokens: np.ndarray, trained: np.ndarray) -> dict[str, Any]:
    t = tokens[idx]
    return {"tokens": int(t.sum()), "trainable_tokens": int(trained[idx].sum()),
            "token_distribution": {"min": int(t.min()), "p50": int(np.percentile(t, 50)),
                                   "p95": int(np.percentile(t, 95)), "max": int(t.max())}}
