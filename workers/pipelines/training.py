"""Training jobs: LoRA supervised fine-tuning of Qwen3 through Tinker (DESIGN.md §4).

The loop submits `forward_backward` and `optim_step` back to back, then renders the next batch while the
service works, and only then waits; as soon as a step's results are in, the next step is submitted and the
bookkeeping of the finished one runs while the service works. Checkpoints (`save_state`) record the exact `next_step`; a re-run
resumes from the newest one with `create_training_client_from_state_with_optimizer`, and the batch for any
step is a pure function of (seed, step), so no batch is applied twice in the final lineage.

With `export_adapter`, the final LoRA weights are also exported (`save_weights_external`), their signed URLs
fetched (`RestClient.get_external_weights_urls`) and each file downloaded into the artifact store as an
`adapter` artifact.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import httpx
import numpy as np
from tinker import types

from app.chat import count_batch, render
from app.db import session_scope
from app.schemas.training import TrainingSpec
from app.services import artifacts as artifacts_service
from app.services import training as training_service
from workers.clients.tinker import datum_from, lr_for, make_service_client, result_of
from workers.errors import JobFailed, RetryJob
from workers.lease import JobContext

EVENT_SECONDS = 5.0
DOWNLOAD_TIMEOUT = httpx.Timeout(60.0, connect=10.0, pool=10.0)
DOWNLOAD_CHUNK = 1 << 20

log = logging.getLogger(__name__)


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


def load_conversations(ctx: JobContext, artifact_id: str) -> list[list[dict[str, Any]]]:
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


@dataclass(frozen=True)
class Batch:
    datums: list[types.Datum]
    tokens: int
    trained: float  # Σ weights: the denominator of the mean loss, computed off the critical path


def _datums(spec: TrainingSpec, rows: list[Any], indices: Any) -> Batch:
    datums, tokens, trained = [], 0, 0.0
    for i in indices:
        r = render(rows[int(i)], train_on=spec.train_on, enable_thinking=spec.enable_thinking)
        datums.append(datum_from(r.tokens, r.weights))
        tokens += len(r.tokens) - 1
        trained += sum(r.weights[1:])
    return Batch(datums, tokens, trained)


def run(spec_dict: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    spec = TrainingSpec.model_validate(spec_dict)
    all_rows = load_conversations(ctx, spec.train_artifact)
    rows, counts = _fit(spec, all_rows, "training")
    plan = make_plan(spec, counts, len(all_rows) - len(rows))
    val: list[Batch] = []
    if spec.validation_artifact:
        val_rows, _ = _fit(spec, load_conversations(ctx, spec.validation_artifact), "validation")
        val = [_datums(spec, val_rows, range(i, min(i + plan.batch_size, len(val_rows))))
               for i in range(0, len(val_rows), plan.batch_size)]
    ctx.update({"result": {"plan": plan.as_dict()}}, [("plan", plan.as_dict())])

    service = make_service_client(ctx.settings)
    with session_scope() as session:
        resume = training_service.latest_checkpoint(session, ctx.job_id)
        start_from = (training_service.resolve_checkpoint(session, team_id=ctx.team_id, ref=spec.from_checkpoint)
                      if spec.from_checkpoint else None)
    if resume is not None:
        client = result_of(service.create_training_client_from_state_with_optimizer(resume.uri))
        start = resume.next_step
        with ctx.fenced(events=[("resumed", {"from_step": start, "checkpoint": resume.id})]) as session:
            training_service.forget_metrics_from(session, ctx.job_id, start + 1)  # metric k = after k steps
    elif start_from is not None:
        client = result_of(service.create_training_client_from_state(start_from))
        start = 0
    else:
        client = result_of(service.create_lora_training_client(base_model=spec.base_model, rank=spec.rank,
                                                           seed=spec.seed))
        start = 0
    result = _train(spec, plan, rows, val, client, start, ctx)
    if spec.export_adapter:
        result.update(_export_adapter(service, client, ctx, plan))
    return result


def _save(client: Any, ctx: JobContext, plan: Plan, step: int, reason: str) -> str:
    path = result_of(client.save_state(f"step-{step:06d}")).path
    _record_checkpoint(ctx, plan, step, path, reason)
    return path


def _record_checkpoint(ctx: JobContext, plan: Plan, step: int, path: str, reason: str) -> None:
    """A resumable checkpoint after `step` steps: the path exactly as Tinker returned it."""
    epoch, index = divmod(step, plan.steps_per_epoch)
    with ctx.fenced(events=[("checkpoint", {"step": step, "path": path, "reason": reason})]) as session:
        training_service.add_checkpoint(session, job_id=ctx.job_id, step=step, kind="state", uri=path,
                                        next_step=step, data={"epoch": epoch, "batch": index, "reason": reason})


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


def _validation_loss(futures: list[Any], batches: list[Batch]) -> float:
    loss = sum(float(result_of(f).metrics["loss:sum"]) for f in futures)
    weights = sum(b.trained for b in batches)
    return loss / weights if weights else math.nan


def _train(spec: TrainingSpec, plan: Plan, rows: list[Any], val: list[Batch], client: Any, start: int,
           ctx: JobContext) -> dict[str, Any]:
    """The loop. The service runs requests in submission order, so after step k's results arrive we submit,
    in order: validation and `save_state` due after k steps, then step k+1; the local work for step k
    (metrics, progress, checkpoint rows) and the rendering of step k+2 happen while step k+1 runs."""
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
        out = result_of(current.forward_backward)
        result_of(current.optim_step)
        seconds = time.monotonic() - current.started
        loss = float(out.metrics["loss:sum"]) / current.batch.trained
        stopping = ctx.cancel_requested.is_set() or ctx.lease_lost.is_set()
        evaluate = bool(val and spec.eval_every and done % spec.eval_every == 0 and done < plan.total_steps)
        val_futures = _validation_futures(client, val) if evaluate else []
        save = (done % spec.save_every == 0 and done < plan.total_steps) or (stopping and done < plan.total_steps)
        save_future = client.save_state(f"step-{done:06d}") if save else None
        following = submit(done, upcoming) if upcoming is not None and not stopping else None

        metrics = {"loss": loss, "lr": current.lr, "step_seconds": seconds, "tokens": float(current.batch.tokens),
                   "trained_tokens": current.batch.trained}
        if val_futures:
            metrics["val_loss"] = _validation_loss(val_futures, val)
        elapsed = time.monotonic() - started
        progress = {"done": done, "total": plan.total_steps, "unit": "steps", "loss": round(loss, 6),
                    "eta_seconds": round(elapsed / (done - start) * (plan.total_steps - done), 1)}
        milestone = time.monotonic() - last_event >= EVENT_SECONDS or done == plan.total_steps
        with ctx.fenced({"progress": progress}, [("progress", progress)] if milestone else None) as session:
            training_service.record_metrics(session, ctx.job_id, done, metrics)
        last_event = time.monotonic() if milestone else last_event
        if save_future is not None:
            _record_checkpoint(ctx, plan, done, result_of(save_future).path, "cancelled" if stopping else "periodic")
        if stopping:
            ctx.check()  # LeaseLost, or JobCancelled with a checkpoint at `done` already recorded
        current = following

    steps_run = plan.total_steps - start
    seconds_per_step = (time.monotonic() - loop_started) / steps_run if steps_run else None
    final_state = _save(client, ctx, plan, plan.total_steps, "final")
    sampler = result_of(client.save_weights_for_sampler(f"final-{plan.total_steps:06d}")).path
    val_loss = _validation_loss(_validation_futures(client, val), val) if val else None
    with ctx.fenced() as session:
        training_service.add_checkpoint(session, job_id=ctx.job_id, step=plan.total_steps, kind="sampler",
                                        uri=sampler, next_step=plan.total_steps, data={})
        if val_loss is not None:
            training_service.record_metrics(session, ctx.job_id, plan.total_steps, {"val_loss": val_loss})
    return {"plan": plan.as_dict(), "steps": plan.total_steps, "final_loss": loss, "final_val_loss": val_loss,
            "state_path": final_state, "sampler_path": sampler, "base_model": spec.base_model,
            "seconds_per_step": seconds_per_step}


# --------------------------------------------------------------------------------------------------------------
# Adapter export (spec.export_adapter)
# --------------------------------------------------------------------------------------------------------------

class _RedactQuery(logging.Filter):
    """httpx logs every request's full URL at INFO; signed URLs carry credentials in their query string."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, httpx.URL) and a.query for a in record.args):
            record.args = tuple(a.copy_with(query=None) if isinstance(a, httpx.URL) else a for a in record.args)
        return True


_redact_query = _RedactQuery()


def _rest_client(service: Any) -> Any:
    """A RestClient sharing the service client's connections (and, in tests, its fake).

    SDK 0.38 deprecates `ServiceClient.create_rest_client()` in favour of `tinker.RestClient(base_url=...,
    api_key=...)`, but that builds its own connections from credentials, outside the client factory (and the
    test fake). Until the factory offers a RestClient, the deprecated method is the supported way from here.
    """
    future: Future[Any] = Future()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            future.set_result(service.create_rest_client())
    except Exception as exc:  # classified like any SDK failure
        future.set_exception(exc)
    return result_of(future)


def _adapter_file_name(file: str) -> PurePosixPath:
    name = PurePosixPath(file)
    if not file or name.is_absolute() or any(part in ("", ".", "..") for part in name.parts):
        raise JobFailed("tinker_error", f"Tinker returned an unusable adapter file name {file!r}.",
                        user_error=False)
    return name


def _download(http: httpx.Client, url: str, file: str, writer: artifacts_service.AtomicWriter) -> None:
    """Stream one signed URL into `writer`. Messages name the file only: the URL's query is a credential."""
    try:
        with http.stream("GET", url) as response:
            if response.status_code != 200:
                raise RetryJob("adapter_download_failed",
                               f"Downloading the exported adapter file {file} failed: HTTP {response.status_code}. "
                               "The job will be retried.")
            for chunk in response.iter_bytes(DOWNLOAD_CHUNK):
                writer.write(chunk)
    except httpx.HTTPError as exc:
        raise RetryJob("adapter_download_failed",
                       f"Downloading the exported adapter file {file} failed ({type(exc).__name__}). "
                       "The job will be retried.") from None


def _export_adapter(service: Any, client: Any, ctx: JobContext, plan: Plan) -> dict[str, Any]:
    """Export the final LoRA weights in Hugging Face format and store every file as an `adapter` artifact."""
    path = result_of(client.save_weights_external(f"adapter-{plan.total_steps:06d}")).path
    urls: dict[str, str] = result_of(_rest_client(service).get_external_weights_urls(path)).urls
    names = {file: _adapter_file_name(file) for file in urls}
    logging.getLogger("httpx").addFilter(_redact_query)  # idempotent: a logger holds a filter once
    outputs: list[dict[str, Any]] = []
    try:
        with httpx.Client(timeout=DOWNLOAD_TIMEOUT, follow_redirects=True) as http:
            for file in sorted(urls):
                log.info("job %s: downloading adapter file %s", ctx.job_id, file)
                writer = artifacts_service.AtomicWriter(f"{ctx.team_id}/{ctx.job_id}/adapter/{names[file]}")
                try:
                    _download(http, urls[file], file, writer)
                    writer.commit()
                except BaseException:
                    writer.abort()
                    raise
                suffix = names[file].suffix.lstrip(".").lower()
                outputs.append({"kind": "adapter", "name": names[file].name, "writer": writer,
                                "fmt": suffix or "bin", "rows": None, "meta": {"tinker_path": path}})
                ctx.check()
    except BaseException:
        for output in outputs:  # committed files that will not be registered
            output["writer"].path.unlink(missing_ok=True)
        raise
    ids = ctx.publish_artifacts(outputs)
    ctx.event("adapter_exported", {"path": path, "files": sorted(urls), "artifacts": ids})
    return {"adapter_artifacts": ids, "adapter_path": path}
