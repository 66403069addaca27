"""Datasets read by byte offset (docs/architecture.md, "Pipelines and resumability").

A training run makes one pass over its ChatML JSONL artifact: each row's token counts decide whether it fits in
max_length, and only the byte offsets of the rows kept stay in memory (8 bytes a row). A batch reads its rows by
`seek` when it is built, so a run's memory does not grow with its dataset. An artifact never changes once
registered, so the offsets stay valid for the whole run (and its resumes, which make the pass again). Which rows
fit is decided in app/chat/fit.py, shared with the job's estimate, so a dry run counts what the run trains on.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from app.chat.fit import fit_file, iter_conversations, no_fit_message
from app.services import artifacts as artifacts_service
from workers.errors import JobFailed
from workers.lease import JobContext

__all__ = ["Dataset", "Fitted", "Rows", "fit_rows", "iter_conversations", "load_conversations", "load_dataset"]


@dataclass(frozen=True)
class Dataset:
    path: Path
    sha256: str | None


def load_dataset(ctx: JobContext, artifact_id: str) -> Dataset:
    path, meta = ctx.read(lambda session: artifacts_service.path_of(session, team_id=ctx.team_id,
                                                                    artifact_id=artifact_id))
    return Dataset(path, meta.get("sha256"))


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
    """One pass over the file: the offsets of the rows that fit in max_length (and have trained tokens), by the
    rule the estimate shares (app/chat/fit.py); fail clearly when none does."""
    fitted = fit_file(dataset.path, max_length=max_length, train_on=train_on, enable_thinking=enable_thinking)
    if not fitted.examples:
        raise JobFailed("no_trainable_examples", no_fit_message(what, max_length, fitted.shortest))
    return Fitted(Rows(dataset.path, fitted.offsets), fitted.total, fitted.tokens, fitted.trained_tokens)
