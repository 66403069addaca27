"""Which rows a training run trains on, how many steps it runs, and the tokens it sends.

One implementation for the training job (workers/pipelines/rows.py, workers/pipelines/training.py) and for its
estimate (app/services/estimates.py), so that a dry run's token counts are the job's own, exactly:

- a row is kept when its rendering (`app.chat.render`, with the run's `train_on` and `enable_thinking`) has at
  most `max_length` tokens and at least one trained token (`fits`); rows are counted a chunk at a time through
  `count_batch`, which gives the same counts as `render`;
- the schedule: `steps_per_epoch = max(1, examples // batch_size)`, `total_steps` from `epochs` / `max_steps`,
  and a step's batch is `batch_size` consecutive rows of `epoch_order(seed, epoch)`; the rows after the last full
  batch of an epoch are not trained in that epoch;
- a row of n rendered tokens is sent as one datum of n - 1 tokens (`model_input = tokens[:-1]`,
  workers/clients/tinker.py `datum_from`), whose trained tokens are the rendering's trained tokens (the first
  token, `<|im_start|>`, never is). Training's per-step metrics `tokens` and `trained_tokens` sum exactly these.
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

from app.chat.render import TrainOn, count_batch

SCAN_CHUNK = 4096  # rows counted per tokenizer call
# The algorithm of `epoch_order` / `batch_indices`; change it whenever their output changes (a training run pins
# it in its plan, so a resume across a change fails `plan_changed` instead of training other batches).
BATCH_ORDER = "numpy.default_rng(seed+epoch).permutation/1"


def iter_conversations(path: Path) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """(byte offset, messages) of each row of a ChatML JSONL artifact, one line at a time."""
    offset = 0
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                yield offset, orjson.loads(line)["messages"]
            offset += len(line)


def fits(tokens: int, trained: int, max_length: int) -> bool:
    """A row is trained when it renders to at most max_length tokens with at least one token to train."""
    return tokens <= max_length and trained > 0


@dataclass(frozen=True)
class Fit:
    """The rows that fit, by byte offset, with the token sums the plan needs (and, asked for, per row)."""

    offsets: np.ndarray  # int64, one per kept row, in file order
    total: int  # rows in the file, kept or not
    tokens: int  # Σ rendered tokens of the kept rows
    trained_tokens: int  # Σ trained tokens of the kept rows
    shortest: int | None  # the shortest rendering of any row (for the "nothing fits" message)
    row_tokens: np.ndarray | None = None  # int64 per kept row, with per_row=True
    row_trained: np.ndarray | None = None

    @property
    def examples(self) -> int:
        return len(self.offsets)


def fit(rows: Iterable[tuple[int, list[dict[str, Any]]]], *, max_length: int, train_on: TrainOn,
        enable_thinking: bool, per_row: bool = False) -> Fit:
    """One pass over (offset, messages) rows: the offsets of the rows that fit (`fits`), counted a chunk at a
    time. With `per_row`, also each kept row's token and trained-token counts (8 more bytes a row each)."""
    offsets, per_tokens, per_trained = array("q"), array("q"), array("q")
    total = tokens = trained = 0
    shortest: int | None = None
    it = iter(rows)
    while chunk := list(itertools.islice(it, SCAN_CHUNK)):
        counts = count_batch([m for _, m in chunk], train_on=train_on, enable_thinking=enable_thinking)
        for (offset, _), (n, t) in zip(chunk, counts, strict=True):
            total += 1
            shortest = n if shortest is None else min(shortest, n)
            if fits(n, t, max_length):
                offsets.append(offset)
                tokens += n
                trained += t
                if per_row:
                    per_tokens.append(n)
                    per_trained.append(t)
    return Fit(_int64(offsets), total, tokens, trained, shortest,
               _int64(per_tokens) if per_row else None, _int64(per_trained) if per_row else None)


def _int64(values: array) -> np.ndarray:
    return np.frombuffer(values, dtype=np.int64) if len(values) else np.zeros(0, dtype=np.int64)


def fit_file(path: Path, *, max_length: int, train_on: TrainOn, enable_thinking: bool,
             per_row: bool = False) -> Fit:
    return fit(iter_conversations(path), max_length=max_length, train_on=train_on,
               enable_thinking=enable_thinking, per_row=per_row)


def no_fit_message(what: str, max_length: int, shortest: int | None) -> str:
    return (f"No {what} example fits in max_length={max_length} tokens with a token to train (the shortest has "
            f"{shortest or 0}; turns with \"weight\": 0 are not trained). Raise max_length, use shorter "
            "conversations, or train on at least one assistant turn per row.")


@dataclass(frozen=True)
class Schedule:
    steps_per_epoch: int
    total_steps: int
    batch_size: int  # rows per step: the spec's batch_size, or every row when there are fewer


def schedule(examples: int, *, batch_size: int, epochs: int | None, max_steps: int | None) -> Schedule:
    """Steps as the training plan computes them (`epochs` and `max_steps` both set: the smaller)."""
    per_epoch = max(1, examples // batch_size)
    total = per_epoch * (epochs or 1)
    if max_steps is not None:
        total = max_steps if epochs is None else min(total, max_steps)
    return Schedule(per_epoch, total, min(batch_size, examples))


def epoch_order(seed: int, epoch: int, examples: int) -> np.ndarray:
    return np.random.default_rng(seed + epoch).permutation(examples)


def batch_indices(seed: int, sched: Schedule, examples: int, step: int) -> np.ndarray:
    """Row indices (into the kept rows) of `step`: epoch e uses epoch_order(seed, e), cut into batches."""
    epoch, index = divmod(step, sched.steps_per_epoch)
    order = epoch_order(seed, epoch, examples)
    return order[index * sched.batch_size:(index + 1) * sched.batch_size]


def run_tokens(fitted: Fit, seed: int, sched: Schedule, *, max_orders: int = 64) -> tuple[int, int, bool]:
    """(datum tokens, trained tokens, exact) the whole run sends: Σ over its steps of each batch row's n - 1 and
    trained tokens. Needs `fit(..., per_row=True)`. An epoch that trains every row needs no shuffling; when
    partial epochs would need more than `max_orders` shuffles, their rows are counted at the mean (not exact)."""
    assert fitted.row_tokens is not None and fitted.row_trained is not None
    n = fitted.examples
    if n == 0 or sched.total_steps == 0:
        return 0, 0, True
    datum = fitted.row_tokens - 1
    full_epochs, rest = divmod(sched.total_steps, sched.steps_per_epoch)
    per_epoch_rows = sched.steps_per_epoch * sched.batch_size
    partial = [(e, sched.steps_per_epoch) for e in range(full_epochs)] if per_epoch_rows < n else []
    whole = full_epochs - len(partial)
    tokens, trained = whole * int(datum.sum()), whole * fitted.trained_tokens
    if rest:
        partial.append((full_epochs, rest))
    exact = len(partial) <= max_orders
    for epoch, steps in partial:
        used = steps * sched.batch_size
        if exact:
            rows = epoch_order(seed, epoch, n)[:used]
            tokens += int(datum[rows].sum())
            trained += int(fitted.row_trained[rows].sum())
        else:
            tokens += round(float(datum.mean()) * used)
            trained += round(fitted.trained_tokens / n * used)
    return tokens, trained, exact
