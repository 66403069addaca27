"""Tinker as a job uses it (docs/tinker-sdk-notes.md): the factory wrapped for jobs, the pure helpers a training
loop needs, error classification, and waits.

The factory itself lives in ``app/tinker_factory.py`` (the API's chat endpoint needs it too; ``app`` never
imports ``workers``); ``make_service_client`` here wraps it so a missing key fails the job, and ``use_fake`` is
re-exported for the tests.

Waits: every SDK future is awaited with ``result_of(future, ctx, what)``, which goes through the job context's
``wait`` (bounded by the job's stall limit, interrupted by a cancel, a shutdown or a lost lease) and classifies
the call's own failure (``classify_error``). No retries here: the SDK retries for minutes by itself.

The API key is never logged, never put in an exception message, never in a repr.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

import tinker
from tinker import types

from app import tinker_factory
from app.db import DatabaseUnavailable
from app.services.transitions import LeaseLost
from app.tinker_errors import classify_error, from_tinker
from app.tinker_factory import use_fake
from workers.errors import JobCancelled, JobFailed, Preempted, RetryJob

log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = [
    "TinkerNotConfigured",
    "Waiter",
    "classify_error",
    "datum_from",
    "from_tinker",
    "hidden_size_for",
    "in_thread",
    "is_transient",
    "is_user_error",
    "lr_for",
    "make_service_client",
    "mean_loss",
    "open_client",
    "result_of",
    "use_fake",
]


# --------------------------------------------------------------------------------------------------------------
# Factory (app/tinker_factory.py, shared with the API) as the workers use it
# --------------------------------------------------------------------------------------------------------------

class TinkerNotConfigured(JobFailed):
    """Tinker cannot be used from this process: no API key (or a malformed one) in the settings."""

    def __init__(self, message: str) -> None:
        super().__init__("tinker_not_configured", message, user_error=False)


def make_service_client(settings: Any) -> tinker.ServiceClient:
    """``app.tinker_factory.make_service_client`` for a job: a missing or malformed key fails the job with code
    ``tinker_not_configured`` (``user_error=False``: an operator has to act)."""
    try:
        return tinker_factory.make_service_client(settings)
    except tinker_factory.NotConfigured as exc:
        raise TinkerNotConfigured(str(exc)) from None


# --------------------------------------------------------------------------------------------------------------
# Data helpers
# --------------------------------------------------------------------------------------------------------------

def datum_from(tokens: Sequence[int], weights: Sequence[float], *, max_length: int | None = None) -> types.Datum:
    """One next-token-prediction ``Datum`` from a rendered sequence and its per-token loss weights.

    Same convention as tinker-cookbook's ``datum_from_tokens_weights``: optionally cut both to ``max_length``,
    then ``model_input = tokens[:-1]``, ``target_tokens = tokens[1:]`` (int64) and ``weights = weights[1:]``
    (float32), each of shape ``[len(tokens) - 1]``. The weight of token ``i`` says whether predicting token
    ``i`` is trained, so the first token's weight is dropped (nothing predicts it).
    """
    if len(tokens) != len(weights):
        raise ValueError(f"tokens and weights differ in length: {len(tokens)} != {len(weights)}")
    if max_length is not None:
        if max_length < 2:
            raise ValueError("max_length must be at least 2")
        tokens, weights = tokens[:max_length], weights[:max_length]
    if len(tokens) < 2:
        raise ValueError("a datum needs at least two tokens")
    token_list = [int(t) for t in tokens]
    weight_list = [float(w) for w in weights]
    n = len(token_list) - 1
    return types.Datum(
        model_input=types.ModelInput.from_ints(token_list[:-1]),
        loss_fn_inputs={
            "target_tokens": types.TensorData(data=token_list[1:], dtype="int64", shape=[n]),
            "weights": types.TensorData(data=weight_list[1:], dtype="float32", shape=[n]),
        },
    )


def _weight_sum(datums: Sequence[types.Datum]) -> float:
    total = 0.0
    for datum in datums:
        weights = datum.loss_fn_inputs.get("weights")
        if weights is None:  # cross_entropy without weights trains every target token
            target = datum.loss_fn_inputs["target_tokens"]
            total += float(len(target.data))
        else:
            total += float(math.fsum(float(w) for w in weights.data))
    return total


def mean_loss(output: types.ForwardBackwardOutput, datums: Sequence[types.Datum]) -> float:
    """Mean cross-entropy per trained token: ``metrics["loss:sum"] / sum(weights)`` (NaN if no weight)."""
    total = _weight_sum(datums)
    loss_sum = float(output.metrics["loss:sum"])
    return loss_sum / total if total > 0 else math.nan


# --------------------------------------------------------------------------------------------------------------
# Error classification
# --------------------------------------------------------------------------------------------------------------

# The rules themselves are in app/tinker_errors.py, shared with the API's chat route.


def is_user_error(exc: BaseException) -> bool:
    """True for errors caused by the request (``RequestFailedError`` with category User, HTTP 400/404/422)."""
    return classify_error(exc) == "user"


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying later: connection errors and timeouts, 5xx, 408/409/429,
    ``RequestFailedError`` with category Server/Unknown."""
    return classify_error(exc) == "transient"


# --------------------------------------------------------------------------------------------------------------
# Learning rate
# --------------------------------------------------------------------------------------------------------------

# Hidden sizes (config.json "hidden_size") of the models the LR formula knows. Variants (-Base, -Instruct-2507,
# -Thinking-2507, -FP8) share their family member's hidden size.
_QWEN3_HIDDEN = {
    "0.6B": 1024,
    "1.7B": 2048,
    "4B": 2560,
    "8B": 4096,
    "14B": 5120,
    "32B": 5120,
    "30B-A3B": 2048,
    "235B-A22B": 4096,
}
_LLAMA3_HIDDEN = {
    "meta-llama/Llama-3.2-1B": 2048,
    "meta-llama/Llama-3.2-3B": 3072,
    "meta-llama/Llama-3.1-8B": 4096,
    "meta-llama/Llama-3.1-70B": 8192,
    "meta-llama/Llama-3.3-70B": 8192,
}
_QWEN3_NAME = re.compile(r"^(?:Qwen/)?Qwen3-(\d+(?:\.\d+)?B(?:-A\d+B)?)(?:-.*)?$", re.IGNORECASE)

_BASE_LR = 5e-5  # full fine-tuning base rate
_LORA_MULTIPLIER = 10.0  # LoRA needs ~10x the full fine-tuning rate
_QWEN_EXPONENT = 0.0775
_LLAMA_EXPONENT = 0.781


def hidden_size_for(base_model: str) -> int:
    """The model's hidden size, from a built-in table (no network); ``ValueError`` for unknown models."""
    match = _QWEN3_NAME.match(base_model.strip())
    if match:
        size = match.group(1).upper()
        if size in _QWEN3_HIDDEN:
            return _QWEN3_HIDDEN[size]
    for prefix, hidden in _LLAMA3_HIDDEN.items():
        if base_model.startswith(prefix):
            return hidden
    raise ValueError(f"No hidden size known for base model {base_model!r}; set learning_rate explicitly.")


def lr_for(base_model: str) -> float:
    """Default LoRA learning rate, as tinker-cookbook's formula-based ``get_lr`` computes it:
    ``5e-5 * 10 * (2000 / hidden_size) ** exponent`` with exponent 0.0775 for Qwen, 0.781 for Llama.
    ``lr_for("Qwen/Qwen3-8B")`` (hidden size 4096) is about 4.73e-4.
    """
    hidden = hidden_size_for(base_model)
    exponent = _LLAMA_EXPONENT if "llama" in base_model.lower() else _QWEN_EXPONENT
    return _BASE_LR * _LORA_MULTIPLIER * (2000.0 / hidden) ** exponent


class Waiter(Protocol):
    """What ``result_of`` waits through: ``workers.lease.JobContext`` (bounded by the job's stall limit, stopped
    by a cancel, a shutdown or a lost lease)."""

    def wait(self, future: Any, what: str) -> Any: ...


# How the job ends, not how the call failed: never classified as a Tinker error.
_CONTROL = (JobCancelled, Preempted, LeaseLost, DatabaseUnavailable)


def result_of(future: Any, ctx: Waiter, what: str) -> Any:
    """Wait for an SDK future through ``ctx.wait`` (``what`` names the call, e.g. ``"forward_backward step 12"``:
    a stalled job says what it waited on); turn the call's failure into how the job should end."""
    try:
        return ctx.wait(future, what)
    except _CONTROL:
        _abandon(future)
        raise
    except Exception as exc:
        raise job_error(exc, what, getattr(ctx, "job_id", None)) from None


def job_error(exc: BaseException, what: str, job_id: str | None = None) -> JobFailed | RetryJob:
    """How a failed Tinker call ends the job: the request's fault (`tinker_rejected`, a user error), an outage
    (`tinker_unavailable`: retried while attempts last, then resumable; never the user's fault nor "a bug"), or
    an account problem an operator must fix (`tinker_error`)."""
    kind = classify_error(exc)
    message = str(exc)[:500] or type(exc).__name__
    if kind == "user":
        return JobFailed("tinker_rejected", f"Tinker rejected {what}: {message}")
    if kind == "transient":
        resume = f"POST /v1/jobs/{job_id}/resume" if job_id else "POST /v1/jobs/{id}/resume"
        return RetryJob("tinker_unavailable",
                        f"Tinker could not be reached during {what} ({type(exc).__name__}: {message}). This is an "
                        f"outage on Tinker's side: the job is retried while it has attempts left, and can then be "
                        f"resumed with {resume} (training continues from its last checkpoint).")
    return JobFailed("tinker_error", f"Tinker refused {what} ({type(exc).__name__}: {message}). Check "
                     "TINKER_API_KEY and the account.", user_error=False)


def _abandon(future: Any) -> None:
    """The job ended while waiting: stop the SDK polling for a result nobody will read (a call that never
    answers would otherwise be polled for as long as the process lives)."""
    getter = getattr(future, "future", None)  # an SDK future's underlying concurrent future
    with contextlib.suppress(Exception):
        (getter() if callable(getter) else future).cancel()


def in_thread(call: Callable[[], T]) -> Future[T]:
    """Run a blocking SDK call (one that does I/O before it returns a future: the first ``create_*`` call of a
    ``ServiceClient`` opens its session synchronously) on a daemon thread, so that waiting for it goes through
    ``result_of`` like any other wait. A call that never returns leaves only its thread behind."""
    future: Future[T] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(call())
        except BaseException as exc:  # handed to the waiter, which classifies it
            future.set_exception(exc)

    threading.Thread(target=run, name="tinker-call", daemon=True).start()
    return future


def open_client(create: Callable[[], Any], ctx: Waiter, what: str) -> Any:
    """The client from a ``ServiceClient.create_*`` call (which returns a future of it, after opening the
    session on its first use): both the call and its future are waited on through ``ctx``."""
    return result_of(result_of(in_thread(create), ctx, what), ctx, what)
