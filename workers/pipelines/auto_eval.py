"""Auto-evaluation of a training run (`auto_eval`): every sampler checkpoint is scored on the validation set
while training continues, and the run names its best checkpoint (docs/architecture.md, "Checkpoints").

The score is the one evaluation reports: the mean loss per trained token of the sampler weights, Σw·(−logprob)
/ Σw over the validation conversations rendered with the run's `train_on` and `enable_thinking` (the same
weights training uses), from `compute_logprobs` of a `SamplingClient` on the checkpoint's sampler path.

Everything runs on the training loop's own thread. Between steps `poll()` only collects futures that are
already done (so `result_of` returns at once) and tops up the requests in flight; only `finish()`, after the
last step, waits. So the loop never waits on a score, every wait still goes through `result_of` (bounded by the
job's stall limit, stopped by a cancel or a lost lease), and only the loop reports progress: a scoring thread
writing scores would keep a hung training loop looking alive.

Scores are stored on their checkpoint rows (`eval_loss`) as they come in; a resumed run scores only the
checkpoints that have none yet.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tinker import types

from app.chat import render
from app.schemas.training import TrainingSpec
from app.services import training as training_service
from workers.clients.tinker import result_of
from workers.lease import JobContext
from workers.pipelines.rows import Rows

IN_FLIGHT = 64  # compute_logprobs requests outstanding per checkpoint being scored

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Conversation:
    prompt: types.ModelInput
    weights: np.ndarray  # the loss weight of each token after the first (the first has no logprob)


def validation_set(spec: TrainingSpec, rows: Rows | list[Any]) -> list[Conversation]:
    """The validation conversations rendered as training renders them, ready to score."""
    conversations = rows.take(range(len(rows))) if isinstance(rows, Rows) else list(rows)
    rendered = [render(messages, train_on=spec.train_on, enable_thinking=spec.enable_thinking)
                for messages in conversations]
    return [Conversation(types.ModelInput.from_ints(r.tokens), np.asarray(r.weights[1:], dtype=np.float64))
            for r in rendered]


def _ready(future: Any) -> bool:
    """Whether an SDK future (or a concurrent one) has completed, without waiting."""
    inner = future.future() if hasattr(future, "future") else future
    return bool(inner.done())


@dataclass
class _Scoring:
    """One checkpoint being scored: its sampling client, the requests in flight, and the sums so far."""

    checkpoint_id: str
    step: int
    sampler_path: str
    client_future: Any
    client: Any = None
    submitted: int = 0
    scored: int = 0
    in_flight: deque[tuple[Conversation, Any]] = field(default_factory=deque)
    nll: float = 0.0
    weight: float = 0.0


class AutoEval:
    """Scores the sampler checkpoints handed to it (`add`), oldest first, without blocking the training loop."""

    def __init__(self, service: Any, conversations: list[Conversation], ctx: JobContext) -> None:
        self.service, self.conversations, self.ctx = service, conversations, ctx
        self.queue: deque[_Scoring] = deque()

    def add(self, checkpoint_id: str, step: int, sampler_path: str) -> None:
        """Start scoring a checkpoint: its sampling client is created now, its requests go out as the ones
        before it finish."""
        client = self.service.create_sampling_client(model_path=sampler_path)
        self.queue.append(_Scoring(checkpoint_id, step, sampler_path, client))

    def add_unscored(self) -> None:
        """A resumed run: score the checkpoints an earlier attempt saved but did not score."""
        for c in self.ctx.read(lambda session: training_service.sampler_checkpoints(session, self.ctx.job_id)):
            if c.eval_loss is None:
                self.add(c.id, c.step, c.sampler_path)

    def poll(self) -> None:
        """Between steps: collect what is done, send what the window allows; never waits."""
        while self.queue and self._advance(self.queue[0], block=False):
            self.queue.popleft()

    def finish(self) -> dict[str, Any] | None:
        """After the last step: wait for every outstanding score (reporting progress as results come in, so a
        long scoring is not taken for a stall); the best checkpoint (lowest eval_loss)."""
        while self.queue:
            self._advance(self.queue[0], block=True)
            self.queue.popleft()
        return self.best()

    def best(self) -> dict[str, Any] | None:
        checkpoints = self.ctx.read(lambda session: training_service.sampler_checkpoints(session, self.ctx.job_id))
        scored = [c for c in checkpoints if c.eval_loss is not None]
        if not scored:
            return None
        best = min(scored, key=lambda c: (c.eval_loss, c.step))
        return {"id": best.id, "step": best.step, "eval_loss": best.eval_loss, "sampler_path": best.sampler_path}

    def close(self) -> None:
        """The run ended early (a cancel, a shutdown, a failure): stop the SDK polling for scores nobody reads.
        The checkpoints stay unscored, and a resumed run scores them."""
        for scoring in self.queue:
            for future in [scoring.client_future, *(f for _, f in scoring.in_flight)]:
                try:
                    (future.future() if hasattr(future, "future") else future).cancel()
                except Exception:  # best effort: the job is ending anyway
                    log.debug("could not cancel an auto_eval future", exc_info=True)
        self.queue.clear()

    def _advance(self, s: _Scoring, *, block: bool) -> bool:
        """Move one checkpoint's scoring on as far as it can without waiting (or to its end with `block`);
        True when its score is recorded."""
        total = len(self.conversations)
        if s.client is None:
            if not (block or _ready(s.client_future)):
                return False
            s.client = result_of(s.client_future, self.ctx, f"create_sampling_client (auto_eval, step {s.step})")
        touched = time.monotonic()
        while True:
            while len(s.in_flight) < IN_FLIGHT and s.submitted < total:
                conversation = self.conversations[s.submitted]
                s.in_flight.append((conversation, s.client.compute_logprobs(conversation.prompt)))
                s.submitted += 1
            if not s.in_flight:
                break
            conversation, future = s.in_flight[0]
            if not (block or _ready(future)):
                return False
            logprobs = result_of(future, self.ctx, f"compute_logprobs (auto_eval of the checkpoint at step "
                                                   f"{s.step}, conversation {s.scored + 1}/{total})")
            s.in_flight.popleft()
            s.nll -= float(conversation.weights @ np.asarray(logprobs[1:], dtype=np.float64))
            s.weight += float(conversation.weights.sum())
            s.scored += 1
            if block and time.monotonic() - touched >= self.ctx.progress_interval:
                self.ctx.write()
                touched = time.monotonic()
        self._record(s)
        return True

    def _record(self, s: _Scoring) -> None:
        eval_loss = s.nll / s.weight if s.weight else math.nan
        if not math.isfinite(eval_loss):  # no trained token to score: nothing to compare
            log.warning("auto_eval: the checkpoint at step %s has no finite score", s.step)
            return
        self.ctx.write(functools.partial(training_service.set_eval_loss, checkpoint_id=s.checkpoint_id,
                                         eval_loss=eval_loss),
                       events=[("checkpoint_scored", {"step": s.step, "checkpoint": s.checkpoint_id,
                                                      "eval_loss": round(eval_loss, 6)})])
