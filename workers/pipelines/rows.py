"""Datasets read by byte offset (docs/architecture.md, "Pipelines and resumability").

A training run makes one pass over its ChatML JSONL artifact: each row's token counts decide whether it fits in
max_length, and only the byte offsets of the rows kept stay in memory (8 bytes a row). A batch reads its rows by
`seek` when it is built, so a run's memory does not grow with its dataset. An artifact never changes once
registered, so the offsets stay valid for the whole run (and its resumes, which make the pass again).
"""

from __future__ import annotations

import itertools
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from app.chat import count_batch
from app.services import artifacts as artifacts_service
from workers.errors import JobFailed
from workers.lease import JobContext

SCAN_CHUNK = 4096  # rows counted per tokenizer call while indexing a dataset


@dataclass(frozen=True)
class Dataset:
    path: Path
    sha256: str | None


def load_dataset(ctx: JobContext, artifact_id: str) -> Dataset:
    path, meta = ctx.read(lambda session: artifacts_service.path_of(session, team_id=ctx.team_id,
                                                                    artifact_id=artifact_id))
    return Dataset(path, meta.get("sha256"))


def iter_conversations(path: Path) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """(byte offset, messages) of each row of a ChatML JSONL artifact, one line at a time."""
    offset = 0
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                yield offset, orjson.loads(line)["messages"]
            offset += len(line)


def load_conversations(ctx: JobContext, artifact_id: str, limit: int | None = None) -> list[list[dict[str, Any]]]:
    """The first `limit` conversations of an artifact (all without a limit); reading stops there."""
    rows = (messages for _, messages in iter_conversations(load_dataset(ctx, artifact_id).path))
    return list(itertools.islice(rows, limit))


class Rows:
    """The rows a run trains on, read by byte offset when a batch is built: the run holds 8 bytes per row (its
    offset in the artifact, which never changes once registered), not the conversations."""

    def __init__(self, path: Path, offsets: np.ndarray) -> None:
        self.path = path
        self.offsets = offsets

    def __len__(self) -> int:
        return len(self.offsets)

    def take(self, indices: Iterable[Any]) -> list[list[dict[str, Any]]]:
        out = []
        with open(self.path, "rb") as f:
            for i in indices:
                f.seek(int(self.offsets[int(i)]))
                out.append(orjson.loads(f.readline())["messages"])
        return out


@dataclass(frozen=True)
class Fitted:
    """The rows of a dataset that fit in max_length, with the token sums the plan needs."""

    rows: Rows
    total: int  # rows in the file, kept or not
    tokens: int
    trained_tokens: int


def fit_rows(dataset: Dataset, what: str, *, max_length: int, train_on: Any, enable_thinking: bool) -> Fitted:
    """One pass over the file: the offsets of the rows that fit in max_length (and have trained tokens), counted
    a chunk at a time; fail clearly when none does."""
    offsets, total, tokens, trained = array("q"), 0, 0, 0
    shortest: int | None = None
    rows = iter_conversations(dataset.path)
    while chunk := list(itertools.islice(rows, SCAN_CHUNK)):
        counts = count_batch([m for _, m in chunk], train_on=train_on, enable_thinking=enable_thinking)
        for (offset, _), (n, t) in zip(chunk, counts, strict=True):
            total += 1
            shortest = n if shortest is None else min(shortest, n)
            if n <= max_length and t > 0:
                offsets.append(offset)
                tokens += n
                trained += t
    if not offsets:
        raise JobFailed("no_trainable_examples",
                        f"No {what} example fits in max_length={max_length} tokens with a token to train (the "
                        f"shortest has {shortest or 0}; turns with \"weight\": 0 are not trained). Raise "
                        "max_length, use shorter conversations, or train on at least one assistant turn per row.")
    return Fitted(Rows(dataset.path, np.frombuffer(offsets, dtype=np.int64)), total, tokens, trained)
