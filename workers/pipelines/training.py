"""Training jobs: LoRA SFT of Qwen3 through Tinker (docs/architecture.md, "Pipelines and resumability").

The loop submits `forward_backward` and `optim_step` back to back, then renders the next batch while the
service works, and only then waits; as soon as a step's results are in, the next step is submitted and the
bookkeeping of the finished one runs while the service works. Every wait goes through the job context
(`result_of(future, ctx, what)`): it is bounded by the job's stall limit and names the call it waits on, and a
cancel, a shutdown or a lost lease interrupts it.

Checkpoints (`save_state`) record the exact `next_step`; a re-run (a preemption, a retry, or `POST .../resume`
of a failed or cancelled job) resumes from the newest one with `create_training_client_from_state_with_optimizer`,
and the batch and learning rate of any step are pure functions of (plan, step), so the step count and the LR
schedule continue where they were and no batch is applied twice in the final lineage.

The plan (examples, steps, batch size, LR and its schedule, the data's sha256, the renderer version, the batch
order) is computed from the spec, the data and the code of the moment, so each state checkpoint pins the plan
it was trained under (in its `data`). A resume recomputes the plan and fails with `plan_changed` when it differs,
instead of silently training other batches after the ones already applied.

When the worker asks the job to stop (a cancel, or a shutdown: `ctx.stop_requested`), the step in flight
finishes, a checkpoint is saved and recorded at that step, and `ctx.check()` ends the run: cancelled, or handed
back to resume elsewhere without spending an attempt.

The run holds the byte offsets of its rows, not the rows: each batch is read by offset when it is built
(workers/pipelines/rows.py), so the same seed gives the same batches whatever the dataset's size.

Checkpoints: one row per saved step. `save_state` runs every `save_every` steps and at every sampler step;
`save_weights_for_sampler` every `sampler_every` steps (default: with each state) and at the end; both are
submitted before the next step, and the row lists both paths with the step's training and validation loss.
With `auto_eval`, each sampler checkpoint is scored on the validation set while training continues
(workers/pipelines/auto_eval.py) and the result names `best_checkpoint`.

The Tinker run carries `user_metadata` with the job and team ids, so a run seen on the Tinker console can be
traced back to its job.

With `export_adapter`, the final LoRA weights are also exported (workers/pipelines/adapter_export.py).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import numpy as np
from tinker import types

from app.chat import RENDERER_VERSION, render
from app.chat.fit import BATCH_ORDER, Schedule, batch_indices, epoch_order, schedule
from app.schemas.common import plain
from app.schemas.training import TrainingSpec
from app.services import training as training_service
from workers.clients.tinker import datum_from, lr_for, make_service_client, open_client, result_of
from workers.errors import JobFailed, Preempted
from workers.lease import JobContext
from workers.pipelines.adapter_export import export_adapter
from workers.pipelines.auto_eval import AutoEval, validation_set
from workers.pipelines.rows import Fitted, Rows, fit_rows, load_dataset

EVENT_SECONDS = 5.0
DOWNLOAD_TIMEOUT = httpx.Timeout(60.0, connect=10.0, pool=10.0)
DOWNLOAD_CHUNK = 1 << 20

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """Everything that decides which batch and which learning rate each step gets. Pinned in checkpoints."""

    examples: int
    dropped_too_long: int
    steps_per_epoch: int
    total_steps: int
    batch_size: int
    trained_tokens_per_epoch: int
    tokens_per_epoch: int
    learning_rate: float
    lr_schedule: str
    warmup_steps: int
    seed: int
    train_sha256: str | None
    validation_sha256: str | None
    validation_examples: int
    renderer_version: int
    batch_order: str
    order_sha256: str  # of epoch 0's row order: catches a change of the shuffling library too

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_plan(spec: TrainingSpec, fitted: Fitted, *, train_sha256: str | None = None,
              validation_sha256: str | None = None, validation_examples: int = 0) -> Plan:
    n = len(fitted.rows)
    steps = schedule(n, batch_size=spec.batch_size, epochs=spec.epochs, max_steps=spec.max_steps)  # app/chat/fit.py
    order = np.ascontiguousarray(epoch_order(spec.seed, 0, n), dtype="<i8")
    return Plan(examples=n, dropped_too_long=fitted.total - n, steps_per_epoch=steps.steps_per_epoch,
                total_steps=steps.total_steps, batch_size=steps.batch_size,
                trained_tokens_per_epoch=fitted.trained_tokens,
                tokens_per_epoch=fitted.tokens,
                learning_rate=spec.learning_rate or lr_for(spec.base_model), lr_schedule=spec.lr_schedule,
                warmup_steps=spec.warmup_steps, seed=spec.seed, train_sha256=train_sha256,
                validation_sha256=validation_sha256, validation_examples=validation_examples,
                renderer_version=RENDERER_VERSION, batch_order=BATCH_ORDER,
                order_sha256=hashlib.sha256(order.tobytes()).hexdigest())


def check_plan(plan: Plan, checkpoint: Any) -> None:
    """Refuse to resume from `checkpoint` when the plan it was trained under differs from `plan` (the same
    spec, with today's data and code): the steps after it would not be the run's own."""
    pinned = (checkpoint.data or {}).get("plan")
    if pinned is None:  # a checkpoint written before plans were pinned: nothing to compare
        log.warning("checkpoint %s pins no plan; resuming without checking it", checkpoint.id)
        return
    now = plan.as_dict()
    # The keys both know: a plan field added by a later deploy cannot be checked against older checkpoints, and
    # must not fail every run that was in flight.
    changed = {key: {"pinned": pinned[key], "now": now[key]}
               for key in sorted(set(pinned) & set(now)) if pinned[key] != now[key]}
    if not changed:
        return
    listed = ", ".join(f"{key} {c['pinned']!r} → {c['now']!r}" for key, c in changed.items())
    raise JobFailed(
        "plan_changed",
        f"This run cannot continue as the same run: its training plan changed since its checkpoint at step "
        f"{checkpoint.step} ({listed}), so the remaining steps would train on other batches than planned. Submit "
        f"a new training job to train under the new plan; to keep the weights trained so far, submit it with "
        f"from_checkpoint=\"{checkpoint.id}\" (it starts its own step count and LR schedule).",
        user_error=False, details={"changed": changed, "checkpoint": checkpoint.id, "step": checkpoint.step})


def batch_rows(spec: TrainingSpec, plan: Plan, step: int) -> np.ndarray:
    """Row indices of `step`: epoch e uses permutation(seed + e), cut into consecutive batches (app/chat/fit.py)."""
    steps = Schedule(plan.steps_per_epoch, plan.total_steps, plan.batch_size)
    return batch_indices(spec.seed, steps, plan.examples, step)


def learning_rate(spec: TrainingSpec, plan: Plan, step: int) -> float:
    base = plan.learning_rate
    if spec.warmup_steps and step < spec.warmup_steps:
        return base * (step + 1) / spec.warmup_steps
    span = max(1, plan.total_steps - spec.warmup_steps)
    progress = min(1.0, (step - spec.warmup_steps) / span)
    if spec.lr_schedule == "linear":
        return base * (1.0 - progress)
    if spec.lr_schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * progress))
    return base


@dataclass(frozen=True)
class Batch:
    datums: list[types.Datum]
    tokens: int
    trained: float  # Σ weights: the denominator of the mean loss, computed off the critical path


def _datums(spec: TrainingSpec, rows: Rows | list[Any], indices: Any) -> Batch:
    """The batch of rows `indices` (read by offset from a `Rows`, or taken from a list of conversations)."""
    conversations = rows.take(indices) if isinstance(rows, Rows) else [rows[int(i)] for i in indices]
    datums, tokens, trained = [], 0, 0.0
    for messages in conversations:
        r = render(messages, train_on=spec.train_on, enable_thinking=spec.enable_thinking)
        datums.append(datum_from(r.tokens, r.weights))
        tokens += len(r.tokens) - 1
        trained += sum(r.weights[1:])
    return Batch(datums, tokens, trained)


def run(spec_dict: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    spec = TrainingSpec.model_validate(spec_dict)
    train = load_dataset(ctx, plain(spec.train_artifact))
    fitted = fit_rows(train, "training", max_length=spec.max_length, train_on=spec.train_on,
                      enable_thinking=spec.enable_thinking)
    rows = fitted.rows
    val_rows: Rows | list[Any] = []
    validation = None
    if spec.validation_artifact:
        validation = load_dataset(ctx, plain(spec.validation_artifact))
        val_rows = fit_rows(validation, "validation", max_length=spec.max_length, train_on=spec.train_on,
                            enable_thinking=spec.enable_thinking).rows
    plan = make_plan(spec, fitted, train_sha256=train.sha256,
                     validation_sha256=validation.sha256 if validation else None, validation_examples=len(val_rows))

    def checkpoints(session: Any) -> tuple[Any, str | None]:
        start_from = (training_service.resolve_checkpoint(session, team_id=ctx.team_id, ref=plain(spec.from_checkpoint))
                      if spec.from_checkpoint else None)
        return training_service.latest_checkpoint(session, ctx.job_id), start_from

    resume, start_from = ctx.read(checkpoints)
    if resume is not None:
        check_plan(plan, resume)
    val = [_datums(spec, val_rows, range(i, min(i + plan.batch_size, len(val_rows))))
           for i in range(0, len(val_rows), plan.batch_size)]
    ctx.update({"result": {"plan": plan.as_dict()}}, [("plan", plan.as_dict())])

    service = make_service_client(ctx.settings)
    metadata = {"tuneq_job_id": ctx.job_id, "tuneq_team_id": ctx.team_id}  # shown on the Tinker console
    if resume is not None:
        client = open_client(lambda: service.create_training_client_from_state_with_optimizer(
            resume.uri, user_metadata=metadata), ctx, f"loading checkpoint {resume.id} (step {resume.next_step})")
        start = resume.next_step
        # metric k = after k steps: the steps after the checkpoint are redone
        ctx.write(lambda session: training_service.forget_metrics_from(session, ctx.job_id, start + 1),
                  events=[("resumed", {"from_step": start, "checkpoint": resume.id})])
    elif start_from is not None:
        client = open_client(lambda: service.create_training_client_from_state(start_from, user_metadata=metadata),
                             ctx, "loading spec.from_checkpoint")
        start = 0
    else:
        client = open_client(lambda: service.create_lora_training_client(
            base_model=spec.base_model, rank=spec.rank, seed=spec.seed, user_metadata=metadata),
            ctx, "create_lora_training_client")
        start = 0
    scorer = AutoEval(service, validation_set(spec, val_rows), ctx) if spec.auto_eval else None
    if scorer is not None:
        scorer.add_unscored()
    try:
        result = _train(spec, plan, rows, val, client, start, ctx, scorer)
    finally:
        if scorer is not None:
            scorer.close()
    if spec.export_adapter:
        result.update(export_adapter(service, client, ctx, plan.total_steps))
    return result


def _record_checkpoint(ctx: JobContext, plan: Plan, step: int, saves: tuple[Any, Any],
                       losses: Mapping[str, float | None], reason: str,
                       scorer: AutoEval | None) -> tuple[str, str | None]:
    """A resumable checkpoint after `step` steps, from the futures of its `save_state` and (when due) its
    `save_weights_for_sampler`: the paths exactly as Tinker returned them, the step's losses, and the plan it was
    trained under (each checkpoint pins it, so the one a resume starts from can be checked on its own). Sampler
    weights go to the scorer. Its state and sampler paths."""
    state, sampler = saves
    path = result_of(state, ctx, f"save_state after step {step}").path
    sampler_path = (result_of(sampler, ctx, f"save_weights_for_sampler after step {step}").path
                    if sampler is not None else None)
    epoch, index = divmod(step, plan.steps_per_epoch)
    checkpoint_id = ctx.write(lambda session: training_service.add_checkpoint(
        session, job_id=ctx.job_id, step=step, kind="state", uri=path, next_step=step, sampler_uri=sampler_path,
        loss=_finite(losses.get("loss")), val_loss=_finite(losses.get("val_loss")),
        data={"epoch": epoch, "batch": index, "reason": reason, "plan": plan.as_dict()}),
        events=[("checkpoint", {"step": step, "path": path, "sampler_path": sampler_path, "reason": reason})])
    if scorer is not None and sampler_path is not None and checkpoint_id is not None:
        scorer.add(checkpoint_id, step, sampler_path)
    return path, sampler_path


def _save_for_sampler(client: Any, name: str, ctx: JobContext) -> Any:
    """`save_weights_for_sampler(name)`, in the run's request order at the point of the call. The SDK's public
    method (tinker 0.38) takes its place in that order only when its coroutine starts on the SDK's thread, so the
    next step, submitted at once from this thread, usually goes first and the "step k" weights would be step
    k+1's. Its implementation method takes the place here; without it (another SDK) we wait for the save
    instead: a round trip, but the right weights."""
    impl = getattr(client, "_save_weights_for_sampler_impl", None)
    if impl is not None:
        return impl(name, None, None, "snapshot")
    done: Future[Any] = Future()
    done.set_result(result_of(client.save_weights_for_sampler(name), ctx, f"save_weights_for_sampler {name}"))
    return done


@dataclass
class InFlight:
    step: int
    batch: Batch
    lr: float
    started: float
    forward_backward: Any
    optim_step: Any


def _validation_futures(client: Any, batches: list[Batch]) -> list[Any]:
    return [client.forward(b.datums, "cross_entropy") for b in batches]


def _validation_loss(futures: list[Any], batches: list[Batch], ctx: JobContext, step: int) -> float:
    """Mean validation loss per trained token. A long validation reports progress as its batches come in, so
    that only a single call that never answers counts as a stall, not an honest long validation."""
    loss, touched = 0.0, time.monotonic()
    for i, future in enumerate(futures):
        out = result_of(future, ctx, f"validation forward {i + 1}/{len(futures)} after step {step}")
        loss += float(out.metrics["loss:sum"])
        if time.monotonic() - touched >= ctx.progress_interval:
            ctx.write()
            touched = time.monotonic()
    weights = sum(b.trained for b in batches)
    return loss / weights if weights else math.nan


def _stop_reason(ctx: JobContext) -> str:
    """Why the run stops (after `ctx.stop_requested`): the reason recorded with its last checkpoint."""
    if ctx.lease_lost.is_set():
        ctx.check()  # LeaseLost: nothing more can be recorded
    return "cancelled" if ctx.cancel_requested.is_set() else "shutdown"


def _train(spec: TrainingSpec, plan: Plan, rows: Rows, val: list[Batch], client: Any, start: int,
           ctx: JobContext, scorer: AutoEval | None = None) -> dict[str, Any]:
    """The loop. The service runs requests in submission order, so after step k's results arrive we submit,
    in order: validation, `save_state` and `save_weights_for_sampler` due after k steps, then step k+1; the
    local work for step k (metrics, progress, checkpoint rows, collecting auto_eval scores) and the rendering
    of step k+2 happen while step k+1 runs.
    Asked to stop, it submits no further step: it saves and records a checkpoint at k, then ends the run."""
    adam = spec.adam
    started = loop_started = time.monotonic()
    last_event, loss = 0.0, math.nan

    def submit(step: int, batch: Batch) -> InFlight:
        lr = learning_rate(spec, plan, step)
        return InFlight(step, batch, lr, time.monotonic(), client.forward_backward(batch.datums, "cross_entropy"),
                        client.optim_step(types.AdamParams(learning_rate=lr, beta1=adam.beta1, beta2=adam.beta2,
                                                           eps=adam.eps, weight_decay=adam.weight_decay,
                                                           grad_clip_norm=adam.grad_clip_norm)))

    ctx.check()
    current = submit(start, _datums(spec, rows, batch_rows(spec, plan, start))) if start < plan.total_steps else None
    while current is not None:
        done = current.step + 1
        upcoming = _datums(spec, rows, batch_rows(spec, plan, done)) if done < plan.total_steps else None
        out = result_of(current.forward_backward, ctx, f"forward_backward step {done}")
        result_of(current.optim_step, ctx, f"optim_step step {done}")
        seconds = time.monotonic() - current.started
        loss = float(out.metrics["loss:sum"]) / current.batch.trained
        stop_reason = _stop_reason(ctx) if ctx.stop_requested else None
        evaluate = bool(val and spec.eval_every and done % spec.eval_every == 0 and done < plan.total_steps
                        and stop_reason is None)
        val_futures = _validation_futures(client, val) if evaluate else []
        sampler_due = bool(spec.sampler_interval and done % spec.sampler_interval == 0 and done < plan.total_steps)
        save = (done % spec.save_every == 0 and done < plan.total_steps) or sampler_due or stop_reason is not None
        save_future = client.save_state(f"step-{done:06d}") if save else None
        sampler_future = _save_for_sampler(client, f"step-{done:06d}", ctx) if sampler_due else None
        following = submit(done, upcoming) if upcoming is not None and stop_reason is None else None

        metrics = {"loss": loss, "lr": current.lr, "step_seconds": seconds, "tokens": float(current.batch.tokens),
                   "trained_tokens": current.batch.trained}
        if val_futures:
            metrics["val_loss"] = _validation_loss(val_futures, val, ctx, done)
        elapsed = time.monotonic() - started
        progress = {"done": done, "total": plan.total_steps, "unit": "steps", "loss": round(loss, 6),
                    "eta_seconds": round(elapsed / (done - start) * (plan.total_steps - done), 1)}
        milestone = time.monotonic() - last_event >= EVENT_SECONDS or done == plan.total_steps
        ctx.write(functools.partial(training_service.record_metrics, job_id=ctx.job_id, step=done, values=metrics),
                  {"progress": progress}, [("progress", progress)] if milestone else None)
        last_event = time.monotonic() if milestone else last_event
        if save_future is not None:
            _record_checkpoint(ctx, plan, done, (save_future, sampler_future), metrics, stop_reason or "periodic",
                               scorer)
        if scorer is not None:
            scorer.poll()
        if stop_reason is not None:
            ctx.check()  # JobCancelled, or Preempted on shutdown: the checkpoint at `done` is recorded
            raise Preempted("shutdown", "the worker asked the job to stop")  # not reached: the stop is sticky
        current = following

    steps_run = plan.total_steps - start
    seconds_per_step = (time.monotonic() - loop_started) / steps_run if steps_run else None
    if steps_run == 0:  # resumed from a checkpoint at the last step: the loss is the one recorded then
        loss = ctx.read(lambda session: training_service.metric_value(session, ctx.job_id, "loss",
                                                                      plan.total_steps)) or math.nan
    saves = (client.save_state(f"step-{plan.total_steps:06d}"),
             _save_for_sampler(client, f"final-{plan.total_steps:06d}", ctx))
    val_loss = _validation_loss(_validation_futures(client, val), val, ctx, plan.total_steps) if val else None
    if val_loss is not None:
        ctx.write(functools.partial(training_service.record_metrics, job_id=ctx.job_id, step=plan.total_steps,
                                    values={"val_loss": val_loss}))
    final_state, sampler = _record_checkpoint(ctx, plan, plan.total_steps, saves,
                                              {"loss": loss, "val_loss": val_loss}, "final", scorer)
    result = {"plan": plan.as_dict(), "steps": plan.total_steps, "final_loss": _finite(loss),
              "final_val_loss": _finite(val_loss), "state_path": final_state, "sampler_path": sampler,
              "base_model": spec.base_model, "seconds_per_step": seconds_per_step}
    if scorer is not None:
        result["best_checkpoint"] = scorer.finish()
    return result


def _finite(value: float | None) -> float | None:
    """JSON has no NaN (PostgreSQL's jsonb refuses it): an undefined loss is null."""
    return value if value is not None and math.isfinite(value) else None
