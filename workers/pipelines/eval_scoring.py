"""Scoring and sampling for evaluation jobs: each held-out conversation's loss under a model (Σ weight·(−logprob)
over the scored tokens, from Tinker's prompt logprobs) and a reply sampled for the first `samples` usable ones.

Where the time goes (bench/evaluation.py, profiled, then measured variant by variant): the SDK's I/O thread and
the requests hold the GIL most of the time, so the scoring loop must do next to nothing, and it does: with every
conversation already rendered it runs as fast as the bare `compute_logprobs` loop. Rendering (tokenizing, ~0.2 ms
a conversation) is the one real cost left. Rendering while requests are in flight, on the loop's thread or on a
thread of its own, was never faster than rendering up front and often slower (the render and the I/O thread
trade the GIL and the window drains), so every conversation is rendered once, before the first request, and kept
for every model (weights as arrays, their sum precomputed). The loop does no SQL: results go to the
conversations' `eval_sample` rows in batches, one write (with the job's progress) at most every FLUSH_SECONDS.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from tinker import types

from app.chat import get_tokenizer, render, render_prompt
from app.chat.tokenizer import ENDOFTEXT, IM_END
from app.schemas.evaluation import EvaluationSpec
from workers.clients.tinker import result_of
from workers.lease import JobContext

IN_FLIGHT = 64  # scoring requests outstanding at once, per model
FLUSH_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one conversation is to the scoring: "scored" (with its input and per-position weights),
    "prompt_only" (it ends with a user turn: sampled and judged, not scored), "too_long" or "no_scored_tokens"."""

    scoring: str
    model_input: Any = None
    weights: Any = None  # float64 array of the weights of positions 1.. (position 0 has no logprob)
    weight: float = 0.0  # their sum

    @property
    def usable(self) -> bool:
        return self.scoring in ("scored", "prompt_only")


class Examples:
    """The held-out conversations of one run, each rendered once, up front (see the module docstring)."""

    def __init__(self, spec: EvaluationSpec, rows: list[list[dict[str, Any]]]) -> None:
        self.spec, self.rows = spec, rows
        self._outcomes = [self._classify(messages) for messages in rows]

    def outcome(self, row: int) -> Outcome:
        return self._outcomes[row]

    def _classify(self, messages: list[dict[str, Any]]) -> Outcome:
        spec = self.spec
        if messages[-1]["role"] == "user":
            fits = len(render_prompt(messages, enable_thinking=spec.enable_thinking)) <= spec.max_length
            return Outcome("prompt_only" if fits else "too_long")
        r = render(messages, train_on=spec.train_on, enable_thinking=spec.enable_thinking)
        if len(r.tokens) > spec.max_length:
            return Outcome("too_long")
        weights = np.asarray(r.weights[1:], dtype=np.float64)
        if not weights.any():
            return Outcome("no_scored_tokens")
        return Outcome("scored", types.ModelInput.from_ints(r.tokens), weights, float(weights.sum()))

    def sampled(self) -> list[tuple[int, list[dict[str, Any]], str | None]]:
        """(row, prompt context, reference reply or None) of the first `samples` usable conversations."""
        chosen: list[tuple[int, list[dict[str, Any]], str | None]] = []
        for row, messages in enumerate(self.rows):
            if len(chosen) == self.spec.samples:
                break
            if self.outcome(row).usable:
                chosen.append((row, *split_last_reply(messages)))
        return chosen


def split_last_reply(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
    """The conversation before its last assistant turn (the prompt to sample from) and that turn's text; a
    conversation that ends with a user turn is all prompt, with no reference."""
    if messages[-1]["role"] == "user":
        return messages, None
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], str(messages[last]["content"])


class Recorder:
    """Results waiting for their batch write; `store(session, results)` writes them, with the job's progress,
    in one fenced transaction at most every FLUSH_SECONDS (and at `flush()`)."""

    def __init__(self, ctx: JobContext, store: Callable[[Any, list[dict[str, Any]]], None], *, done: int,
                 total: int, unit: str) -> None:
        self.ctx, self.store = ctx, store
        self.done, self.total, self.unit = done, total, unit
        self.pending: list[dict[str, Any]] = []
        self.extra: dict[str, Any] = {}
        self.started = time.monotonic()
        self.first = done
        self.next_flush = self.started + FLUSH_SECONDS

    def add(self, result: dict[str, Any] | None = None, count: int = 1) -> None:
        if result is not None:
            self.pending.append(result)
        self.done += count
        if time.monotonic() >= self.next_flush:
            self.flush()

    def flush(self, event: bool = False) -> None:
        batch, self.pending = self.pending, []
        elapsed, now_done = time.monotonic() - self.started, self.done - self.first
        eta = round(elapsed / now_done * (self.total - self.done), 1) if now_done and self.total else None
        progress = {"done": self.done, "total": self.total, "unit": self.unit, "eta_seconds": eta, **self.extra}
        self.ctx.write(lambda session: self.store(session, batch), {"progress": progress},
                       [("progress", progress)] if event else None)
        self.next_flush = time.monotonic() + FLUSH_SECONDS
        self.ctx.check()


def score(client: Any, examples: Examples, todo: list[int], label: str, ctx: JobContext, out: Recorder) -> None:
    """Score the `todo` rows under one model with IN_FLIGHT requests outstanding all along; each result (or the
    reason a row is not scored) goes to `out`. The window is refilled before each wait."""
    window: deque[tuple[int, Outcome, Any]] = deque()
    rows = iter(todo)
    while True:
        while len(window) < IN_FLIGHT and (row := next(rows, None)) is not None:
            outcome = examples.outcome(row)
            if outcome.scoring == "scored":
                window.append((row, outcome, client.compute_logprobs(outcome.model_input)))
            else:
                out.add({"row": row, "model": label, "scoring": outcome.scoring, "nll": None, "weight": None})
        if not window:
            return
        row, outcome, future = window.popleft()
        logprobs = result_of(future, ctx, f"compute_logprobs ({label}, conversation {row})")
        nll = -float(outcome.weights @ np.asarray(logprobs[1:], dtype=np.float64))
        out.add({"row": row, "model": label, "scoring": "scored", "nll": nll, "weight": outcome.weight})


def start_samples(client: Any, spec: EvaluationSpec, prompts: list[tuple[int, list[dict[str, Any]]]]
                  ) -> list[tuple[int, Any]]:
    """Submit one sampling request per (row, prompt context): (row, future)."""
    params = types.SamplingParams(max_tokens=spec.max_tokens, temperature=spec.temperature, stop=[IM_END])
    return [(row, client.sample(types.ModelInput.from_ints(render_prompt(context,
                                                                         enable_thinking=spec.enable_thinking)),
                                1, params)) for row, context in prompts]


def collect_samples(futures: list[tuple[int, Any]], label: str, ctx: JobContext) -> list[dict[str, Any]]:
    """The decoded replies of `start_samples`' requests, as eval_sample results."""
    tokenizer = get_tokenizer()
    replies = []
    for row, future in futures:
        tokens = result_of(future, ctx, f"sample ({label}, conversation {row})").sequences[0].tokens
        replies.append({"row": row, "model": label, "reply": tokenizer.decode([t for t in tokens if t not in (IM_END, ENDOFTEXT)])})
    return replies
