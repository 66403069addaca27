"""Training jobs: LoRA supervised fine-tuning of Qwen3 through Tinker (DESIGN.md §4).

The loop submits `forward_backward` and `optim_step` back to back, then renders the next batch while the
service works, and only then waits. Checkpoints (`save_state`) record the exact `next_step`; a re-run
resumes from the newest one with `create_training_client_from_state_with_optimizer`, and the batch for any
step is a pure function of (seed, step), so no batch is applied twice in the final lineage.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from tinker import types

from app.chat import count_batch, render
from app.db import session_scope
from app.schemas.training import TrainingSpec
from app.services import artifacts as artifacts_service
from app.services import training as training_service
from workers.clients.tinker import classify_error, datum_from, lr_for, make_service_client, mean_loss
from workers.errors import JobCancelled, JobFailed, RetryJob
from workers.lease import JobContext

EVENT_SECONDS = 5.0


@dataclass(frozen=True)
class Plan:
    examples: int
    dropped_too_long: int
    steps_per_epoch: int
    total_steps: int
    batch_size: int
    trained_tokens_per_epoch: int
    tokens_per_epoch: int
    learning_rate: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _load(ctx: JobContext, artifact_id: str) -> list[list[dict[str, Any]]]:
    with session_scope() as session:
        path, _ = artifacts_service.path_of(session, team_id=ctx.team_id, artifact_id=artifact_id)
    return [row["messages"] for row in artifacts_service.iter_jsonl_rows(path)]


def _fit(spec: TrainingSpec, rows: list[list[dict[str, Any]]], what: str) -> tuple[list[Any], list[tuple[int, int]]]:
    """Rows that fit in max_length (with their token counts); fail clearly when none does."""
    counts = count_batch(rows, train_on=spec.train_on, enable_thinking=spec.enable_thinking)
    kept = [(r, c) for r, c in zip(rows, counts, strict=True) if c[0] <= spec.max_length and c[1] > 0]
    if not kept:
        shortest = min((c[0] for c in counts), default=0)
        raise JobFailed("no_trainable_examples",
                        f"No {what} example fits in max_length={spec.max_length} tokens (the shortest has "
                        f"{shortest}). Raise spec.max_length or use shorter conversations.")
    return [r for r, _ in kept], [c for _, c in kept]


def make_plan(spec: TrainingSpec, counts: list[tuple[int, int]], dropped: int) -> Plan:
    n = len(counts)
    per_epoch = max(1, n // spec.batch_size)
    total = per_epoch * (spec.epochs or 1)
    if spec.max_steps is not None:
        total = spec.max_steps if spec.epochs is None else min(total, spec.max_steps)
    return Plan(examples=n, dropped_too_long=dropped, steps_per_epoch=per_epoch, total_steps=total,
                batch_size=min(spec.batch_size, n), trained_tokens_per_epoch=sum(c[1] for c in counts),
                tokens_per_epoch=sum(c[0] for c in counts),
                learning_rate=spec.learning_rate or lr_for(spec.base_model))


def batch_rows(spec: TrainingSpec, plan: Plan, step: int) -> np.ndarray:
    """Row indices of `step`: epoch e uses permutation(seed + e), cut into consecutive batches."""
    epoch, index = divmod(step, plan.steps_per_epoch)
    order = np.random.default_rng(spec.seed + epoch).permutation(plan.examples)
    return order[index * plan.batch_size:(index + 1) * plan.batch_size]


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


def _datums(spec: TrainingSpec, rows: list[Any], indices: Any) -> list[types.Datum]:
    out = []
    for i in indices:
        r = render(rows[int(i)], train_on=spec.train_on, enable_thinking=spec.enable_thinking)
        out.append(datum_from(r.tokens, r.weights))
    return out


def _call(future: Any) -> Any:
    """Wait for an SDK future; turn its failure into how the job should end."""
    try:
        return future.result()
    except Exception as exc:
        kind = classify_error(exc)
        message = str(exc)[:500] or type(exc).__name__
        if kind == "user":
            raise JobFailed("tinker_rejected", f"Tinker rejected the request: {message}") from None
        if kind == "transient":
            raise RetryJob("tinker_unavailable",
                           f"Tinker was unavailable ({type(exc).__name__}: {message}); resuming from the last "
                           "checkpoint.") from None
        raise JobFailed("tinker_error", f"Tinker refused the job ({type(exc).__name__}: {message}). Check "
                        "TINKER_API_KEY and the account.", user_error=False) from None


def run(spec_dict: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    spec = TrainingSpec.model_validate(spec_dict)
    all_rows = _load(ctx, spec.train_artifact)
    rows, counts = _fit(spec, all_rows, "training")
    plan = make_plan(spec, counts, len(all_rows) - len(rows))
    val_datums: list[types.Datum] = []
    if spec.validation_artifact:
        val_rows, _ = _fit(spec, _load(ctx, spec.validation_artifact), "validation")
        val_datums = _datums(spec, val_rows, range(len(val_rows)))
    ctx.update({"result": {"plan": plan.as_dict()}}, [("plan", plan.as_dict())])

    service = make_service_client(ctx.settings)
    with session_scope() as session:
        resume = training_service.latest_state(session, ctx.job_id)
        start_from = (training_service.resolve_checkpoint(session, team_id=ctx.team_id, ref=spec.from_checkpoint)
                      if spec.from_checkpoint else None)
    if resume is not None:
        client = _call(service.create_training_client_from_state_with_optimizer(resume.uri))
        start = resume.next_step
        with ctx.fenced(events=[("resumed", {"from_step": start, "checkpoint": resume.id})]) as session:
            training_service.forget_metrics_from(session, ctx.job_id, start + 1)  # metric k = after k steps
    elif start_from is not None:
        client = _call(service.create_training_client_from_state(start_from))
        start = 0
    else:
        client = _call(service.create_lora_training_client(base_model=spec.base_model, rank=spec.rank,
                                                           seed=spec.seed))
        start = 0
    return _train(spec, plan, rows, val_datums, client, start, ctx)


def _save(client: Any, ctx: JobContext, plan: Plan, step: int, reason: str) -> str:
    path = _call(client.save_state(f"step-{step:06d}")).path
    epoch, index = divmod(step, plan.steps_per_epoch)
    with ctx.fenced(events=[("checkpoint", {"step": step, "path": path, "reason": reason})]) as session:
        training_service.add_checkpoint(session, job_id=ctx.job_id, step=step, kind="state", uri=path,
                                        next_step=step, data={"epoch": epoch, "batch": index, "reason": reason})
    return path


def _validate(client: Any, datums: list[types.Datum], batch_size: int) -> float:
    loss_sum = weight_sum = 0.0
    for i in range(0, len(datums), batch_size):
        chunk = datums[i:i + batch_size]
        out = _call(client.forward(chunk, "cross_entropy"))
        loss = mean_loss(out, chunk)
        weights = sum(float(np.sum(d.loss_fn_inputs["weights"].data)) for d in chunk)
        loss_sum += loss * weights
        weight_sum += weights
    return loss_sum / weight_sum if weight_sum else math.nan


def _train(spec: TrainingSpec, plan: Plan, rows: list[Any], val_datums: list[types.Datum], client: Any, start: int,
           ctx: JobContext) -> dict[str, Any]:
    adam = spec.adam
    started, last_event = time.monotonic(), 0.0
    loss = math.nan
    step = start
    prepared = _datums(spec, rows, batch_rows(spec, plan, start)) if start < plan.total_steps else []
    try:
        for step in range(start, plan.total_steps):
            ctx.check()
            datums, t0, lr = prepared, time.monotonic(), learning_rate(spec, plan, step)
            fb = client.forward_backward(datums, "cross_entropy")
            opt = client.optim_step(types.AdamParams(learning_rate=lr, beta1=adam.beta1, beta2=adam.beta2,
                                                     eps=adam.eps, weight_decay=adam.weight_decay,
                                                     grad_clip_norm=adam.grad_clip_norm))
            if step + 1 < plan.total_steps:  # render the next batch while Tinker works on this one
                prepared = _datums(spec, rows, batch_rows(spec, plan, step + 1))
            out = _call(fb)
            _call(opt)
            loss = mean_loss(out, datums)
            done = step + 1
            metrics = {"loss": loss, "lr": lr, "step_seconds": time.monotonic() - t0,
                       "tokens": float(sum(d.model_input.length for d in datums)),
                       "trained_tokens": float(sum(np.sum(d.loss_fn_inputs["weights"].data) for d in datums))}
            if val_datums and spec.eval_every and done % spec.eval_every == 0 and done < plan.total_steps:
                metrics["val_loss"] = _validate(client, val_datums, plan.batch_size)
            elapsed = time.monotonic() - started
            progress = {"done": done, "total": plan.total_steps, "unit": "steps", "loss": round(loss, 6),
                        "eta_seconds": round(elapsed / (done - start) * (plan.total_steps - done), 1)}
            milestone = time.monotonic() - last_event >= EVENT_SECONDS or done == plan.total_steps
            with ctx.fenced({"progress": progress}, [("progress", progress)] if milestone else None) as session:
                training_service.record_metrics(session, ctx.job_id, done, metrics)
            last_event = time.monotonic() if milestone else last_event
            if done % spec.save_every == 0 and done < plan.total_steps:
                _save(client, ctx, plan, done, "periodic")
    except JobCancelled:
        path = _save(client, ctx, plan, step, "cancelled")  # `step` steps are applied: resume there
        ctx.event("cancelled_checkpoint", {"step": step, "path": path})
        raise

    final_state = _save(client, ctx, plan, plan.total_steps, "final")
    sampler = _call(client.save_weights_for_sampler(f"final-{plan.total_steps:06d}")).path
    val_loss = _validate(client, val_datums, plan.batch_size) if val_datums else None
    with ctx.fenced() as session:
        training_service.add_checkpoint(session, job_id=ctx.job_id, step=plan.total_steps, kind="sampler",
                                        uri=sampler, next_step=plan.total_steps, data={})
        if val_loss is not None:
            training_service.record_metrics(session, ctx.job_id, plan.total_steps, {"val_loss": val_loss})
    return {"plan": plan.as_dict(), "steps": plan.total_steps, "final_loss": loss, "final_val_loss": val_loss,
            "state_path": final_state, "sampler_path": sampler, "base_model": spec.base_model}
