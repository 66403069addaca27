"""Evaluation: the base model and LoRA sampler checkpoints, side by side on held-out conversations.

For each model: the mean loss per scored token (the same assistant-token weights training uses, from Tinker's
prompt logprobs), and a reply sampled for the first `samples` conversations. The replies, next to the
reference, go to one JSONL artifact.

Every wait on Tinker goes through the job context (`result_of(future, ctx, what)`): bounded by the job's stall
limit, naming the call it waits on, interrupted by a cancel, a shutdown or a lost lease. Scoring reports progress
at least once a second, so only a call that never answers counts as a stall.

A re-run (a retry, a preemption, or `POST /v1/jobs/{id}/resume` of a failed or cancelled evaluation) starts over:
scoring is read-only and cheap next to training, so nothing is kept between runs. Each run writes its samples
under its own attempt folder; publishing them replaces what an earlier run registered.
"""

from __future__ import annotations

import functools
import math
import time
from collections import deque
from typing import Any

import numpy as np
import orjson
from tinker import types

from app.chat import get_tokenizer, render, render_prompt
from app.chat.render import Rendered
from app.chat.tokenizer import IM_END
from app.schemas.common import plain
from app.schemas.evaluation import EvaluationSpec
from app.services import training as training_service
from workers.clients.tinker import make_service_client, open_client, result_of
from workers.errors import JobFailed
from workers.lease import JobContext
from workers.pipelines.rows import load_conversations

IN_FLIGHT = 64  # scoring requests outstanding at once, per model
PROGRESS_SECONDS = 1.0


def _models(spec: EvaluationSpec, ctx: JobContext) -> list[tuple[str, str | None]]:
    """(label, sampler path) per model to evaluate; the base model has no path."""
    def read(session: Any) -> list[tuple[str, str | None]]:
        models: list[tuple[str, str | None]] = [("base", None)] if spec.include_base else []
        for ref in map(plain, spec.checkpoints):
            models.append((ref, training_service.resolve_checkpoint(session, team_id=ctx.team_id, ref=ref)))
        if spec.training_job is not None:
            training_job = plain(spec.training_job)
            final = training_service.latest_checkpoint(session, training_job, kind="sampler", team_id=ctx.team_id)
            if final is None:
                raise JobFailed("no_sampler_checkpoint",
                                f"Training job {spec.training_job} has no sampler weights yet (it saves them when it "
                                "succeeds). Submit the evaluation with depends_on=[that job].")
            models.append((training_job, final.uri))
        return models

    return ctx.read(read)


def _examples(spec: EvaluationSpec, rows: list[list[dict[str, Any]]]) -> tuple[list[int], list[Rendered]]:
    """The conversations that fit and have scored tokens: their row numbers and renderings."""
    kept: list[int] = []
    rendered: list[Rendered] = []
    for i, messages in enumerate(rows[: spec.max_examples]):
        r = render(messages, train_on=spec.train_on, enable_thinking=spec.enable_thinking)
        if len(r.tokens) <= spec.max_length and any(r.weights[1:]):
            kept.append(i)
            rendered.append(r)
    if not rendered:
        raise JobFailed("no_scorable_examples",
                        f"None of the first {min(spec.max_examples, len(rows))} conversations has an assistant turn "
                        f"that fits in max_length={spec.max_length} tokens.")
    return kept, rendered


def _score(client: Any, rendered: list[Rendered], ctx: JobContext, label: str, done: int, total: int) -> dict:
    """Σ weight·(−logprob) over the scored tokens, with IN_FLIGHT requests outstanding all along."""
    nll = weight = 0.0
    window: deque[tuple[Rendered, Any]] = deque()
    todo = iter(rendered)
    scored, next_report = 0, time.monotonic() + PROGRESS_SECONDS
    while True:
        while len(window) < IN_FLIGHT and (r := next(todo, None)) is not None:
            window.append((r, client.compute_logprobs(types.ModelInput.from_ints(r.tokens))))
        if not window:
            break
        oldest, future = window.popleft()
        weights = np.asarray(oldest.weights[1:], dtype=np.float64)  # position 0 has no logprob
        logprobs = result_of(future, ctx, f"compute_logprobs ({label}, conversation {scored + 1}/{len(rendered)})")
        nll -= float(weights @ np.asarray(logprobs[1:], dtype=np.float64))
        weight += float(weights.sum())
        scored += 1
        if time.monotonic() >= next_report or scored == len(rendered):  # a SQL write stalls the window
            ctx.progress(done + scored, total, "conversations scored", extra={"model": label})
            next_report = time.monotonic() + PROGRESS_SECONDS
    mean = nll / weight
    return {"mean_loss": round(mean, 6), "perplexity": round(math.exp(min(mean, 50.0)), 4),
            "scored_tokens": int(weight)}


def _sampling_client(service: Any, spec: EvaluationSpec, path: str | None) -> Any:
    if path:
        return service.create_sampling_client(model_path=path)
    return service.create_sampling_client(base_model=spec.base_model)


def _split_last_reply(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """The conversation before its last assistant turn (the prompt to sample from), and that turn's text."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], str(messages[last]["content"])


def run(spec_dict: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    spec = EvaluationSpec.model_validate(spec_dict)
    models = _models(spec, ctx)
    rows = load_conversations(ctx, plain(spec.eval_artifact), limit=spec.max_examples)  # reading stops there
    kept, rendered = _examples(spec, rows)
    sampled = [(i, *_split_last_reply(rows[i])) for i in kept[: spec.samples]]
    prompts = [render_prompt(context, enable_thinking=spec.enable_thinking) for _, context, _ in sampled]
    params = types.SamplingParams(max_tokens=spec.max_tokens, temperature=spec.temperature, stop=[IM_END])
    tokenizer = get_tokenizer()

    service = make_service_client(ctx.settings)
    total = len(rendered) * len(models)
    scores: list[dict[str, Any]] = []
    replies: dict[str, list[str]] = {}
    for n, (label, path) in enumerate(models):
        ctx.check()
        client = open_client(functools.partial(_sampling_client, service, spec, path), ctx,
                             f"create_sampling_client ({label})")
        sample_futures = [client.sample(types.ModelInput.from_ints(prompt), 1, params) for prompt in prompts]
        score = _score(client, rendered, ctx, label, n * len(rendered), total)
        replies[label] = [
            tokenizer.decode([t for t in result_of(f, ctx, f"sample ({label}, reply {k + 1}/{len(sample_futures)})")
                              .sequences[0].tokens if t != IM_END])
            for k, f in enumerate(sample_futures)]
        scores.append({"label": label, "model_path": path, **score})
        ctx.event("model_scored", {"label": label, **score})

    base = next((s for s in scores if s["model_path"] is None), None)
    if base is not None:
        for s in scores:
            s["loss_vs_base"] = round(s["mean_loss"] - base["mean_loss"], 6)
    writer = ctx.artifact_writer("samples.jsonl")
    try:
        for k, (row, context, reference) in enumerate(sampled):
            writer.write(orjson.dumps({"row": row, "messages": context, "reference": reference,
                                       "replies": {label: replies[label][k] for label in replies}},
                                      option=orjson.OPT_APPEND_NEWLINE))
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    [samples_artifact] = ctx.publish_artifacts([{"kind": "evaluation", "name": "samples.jsonl", "writer": writer,
                                                 "fmt": "jsonl", "rows": len(sampled), "meta": {}}])
    best = min(scores, key=lambda s: s["mean_loss"])
    considered = min(spec.max_examples, len(rows))
    return {"base_model": spec.base_model, "examples": len(rendered), "skipped": considered - len(rendered),
            "models": scores, "best": best["label"], "samples_artifact": samples_artifact}
