"""Evaluation: the base model and LoRA sampler checkpoints, side by side on held-out conversations.

For each model: the mean loss per scored token (the same assistant-token weights training uses, from Tinker's
prompt logprobs; eval_scoring.py), a reply sampled for the first `samples` usable conversations, and with `judge`
a verdict on each reply against the base model's or the reference (judge.py). A conversation that ends with a
user turn (a prompt-only set) is not scored but is sampled and judged against the base.

Per-example resume: every result lands on its `eval_sample` row (one per conversation and model), written in
batches. A re-run (a retry, a preemption, or `POST /v1/jobs/{id}/resume`) creates no rows and redoes nothing a
row already holds: it scores, samples and judges only what is missing, and the result is computed from the rows.
The samples artifact is written by the run that finishes, under its own attempt folder; publishing it replaces
what an earlier run registered.

Every wait on Tinker goes through the job context (`result_of(future, ctx, what)`): bounded by the job's stall
limit, naming the call it waits on, interrupted by a cancel, a shutdown or a lost lease.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from typing import Any

import orjson

from app.schemas.common import plain
from app.schemas.evaluation import EvaluationSpec
from app.services import evaluation as evaluation_service
from app.services import training as training_service
from workers.clients.openrouter import OpenRouterError
from workers.clients.tinker import make_service_client, open_client
from workers.errors import JobFailed
from workers.lease import JobContext
from workers.pipelines.eval_scoring import (
    IN_FLIGHT,
    Examples,
    Recorder,
    collect_samples,
    score,
    start_samples,
)
from workers.pipelines.judge import Pair, run_judge, win_rate
from workers.pipelines.rows import load_conversations

__all__ = ["IN_FLIGHT", "run"]

Sampled = list[tuple[int, list[dict[str, Any]], str | None]]


def _models(spec: EvaluationSpec, ctx: JobContext) -> list[tuple[str, str | None]]:
    """(label, sampler path) per model to evaluate; the base model has no path."""
    def read(session: Any) -> list[tuple[str, str | None]]:
        models: list[tuple[str, str | None]] = [("base", None)] if spec.include_base else []
        for ref in map(plain, spec.checkpoints):
            models.append((ref, training_service.sampler_path(session, team_id=ctx.team_id, ref=ref)))
        if spec.training_job is not None:
            training_job = plain(spec.training_job)
            final = training_service.latest_sampler_path(session, training_job, team_id=ctx.team_id)
            if final is None:
                raise JobFailed("no_sampler_checkpoint",
                                f"Training job {spec.training_job} has no sampler weights yet (it saves them when it "
                                "succeeds). Submit the evaluation with depends_on=[that job].")
            models.append((training_job, final))
        return models

    return ctx.read(read)


def _sampling_client(service: Any, spec: EvaluationSpec, path: str | None) -> Any:
    if path:
        return service.create_sampling_client(model_path=path)
    return service.create_sampling_client(base_model=spec.base_model)


def run(spec_dict: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    spec = EvaluationSpec.model_validate(spec_dict)
    if spec.judge is not None and ctx.settings.openrouter_api_key is None:
        raise JobFailed("missing_api_key", "The judge needs OPENROUTER_API_KEY, which the workers do not have; ask an "
                        "operator to set it.", user_error=False)
    models = _models(spec, ctx)
    rows = load_conversations(ctx, plain(spec.eval_artifact), limit=spec.max_examples)  # reading stops there
    if not rows:
        raise JobFailed("no_usable_examples", "The evaluation set has no conversations.")
    examples = Examples(spec, rows)
    sampled = examples.sampled()
    job_id = ctx.job_id
    context = {row: (messages, reference) for row, messages, reference in sampled}
    ctx.write(lambda s: evaluation_service.ensure_rows(s, job_id, [
        {"row": row, "model": label, "sampled": row in context, "messages": context.get(row, (None, None))[0],
         "reference": context.get(row, (None, None))[1]} for row in range(len(rows)) for label, _ in models]))
    scored, replied, judged = ctx.read(lambda s: evaluation_service.recorded(s, job_id))
    ctx.event("plan", {"conversations": len(rows), "models": len(models), "samples": len(sampled),
                       "scored_before": len(scored), "replies_before": len(replied), "verdicts_before": len(judged)})

    _score_and_sample(spec, ctx, models, examples, sampled, scored, replied)
    if spec.judge is not None:
        _judge(spec, ctx, models, judged)
    return _result(spec, ctx, models)


def _score_and_sample(spec: EvaluationSpec, ctx: JobContext, models: list[tuple[str, str | None]], examples: Examples,
                      sampled: Sampled, scored: set[tuple[int, str]], replied: set[tuple[int, str]]) -> None:
    """Score and sample what the rows do not hold yet, model after model."""
    job_id, n = ctx.job_id, len(examples.rows)
    out = Recorder(ctx, lambda s, batch: evaluation_service.record_scores(s, job_id, batch), done=len(scored),
                   total=n * len(models), unit="conversations scored")
    service = make_service_client(ctx.settings)
    for label, path in models:
        ctx.check()
        todo = [row for row in range(n) if (row, label) not in scored]
        prompts = [(row, messages) for row, messages, _ in sampled if (row, label) not in replied]
        if not todo and not prompts:
            continue
        client = open_client(functools.partial(_sampling_client, service, spec, path), ctx,
                             f"create_sampling_client ({label})")
        futures = start_samples(client, spec, prompts)
        out.extra = {"model": label}
        score(client, examples, todo, label, ctx, out)
        out.flush()
        replies = collect_samples(futures, label, ctx)
        totals = ctx.write(functools.partial(_store_replies, job_id, replies))
        assert totals is not None
        ctx.event("model_scored", {"label": label, **_loss(totals.get(label))})


def _store_replies(job_id: str, replies: list[dict[str, Any]], session: Any) -> dict[str, dict[str, Any]]:
    evaluation_service.record_replies(session, job_id, replies)
    return evaluation_service.model_totals(session, job_id)


def _loss(totals: dict[str, Any] | None) -> dict[str, Any]:
    weight = (totals or {}).get("weight", 0.0)
    if not weight:
        return {"mean_loss": None, "perplexity": None, "scored_tokens": 0}
    mean = totals["nll"] / weight if totals else 0.0
    return {"mean_loss": round(mean, 6), "perplexity": round(math.exp(min(mean, 50.0)), 4),
            "scored_tokens": int(weight)}


def _pairs(spec: EvaluationSpec, ctx: JobContext, models: list[tuple[str, str | None]],
           judged: set[tuple[int, str]]) -> list[Pair]:
    """What is left to judge: each sampled reply of each non-base model against the base's reply (prompt-only
    conversations always, as they have no reference) or the reference."""
    assert spec.judge is not None
    rows = ctx.read(lambda s: evaluation_service.sampled_rows(s, ctx.job_id))
    base = {r.row: r.reply for r in rows if r.model == "base"}
    candidates = {label for label, path in models if path is not None}
    pairs = []
    for r in rows:
        if r.model not in candidates or (r.row, r.model) in judged or r.reply is None:
            continue
        if spec.judge.against == "reference" and r.reference is not None:
            pairs.append(Pair(r.row, r.model, r.messages, r.reply, "reference", r.reference))
        elif r.row in base and base[r.row] is not None:
            pairs.append(Pair(r.row, r.model, r.messages, r.reply, "base", base[r.row]))
    return pairs


def _judge(spec: EvaluationSpec, ctx: JobContext, models: list[tuple[str, str | None]],
           judged: set[tuple[int, str]]) -> None:
    assert spec.judge is not None
    pairs = _pairs(spec, ctx, models, judged)
    if not pairs and not judged:
        raise JobFailed("nothing_to_judge", "judge.against is 'reference' but none of the sampled conversations "
                        "has a reference reply (they end with a user turn); judge against the base model instead "
                        "(include_base: true).")
    total = len(pairs) + len(judged)

    def store(verdicts: list[dict[str, Any]], done_now: int) -> None:
        progress = {"done": len(judged) + done_now, "total": total, "unit": "replies judged"}
        ctx.write(lambda s: evaluation_service.record_verdicts(s, ctx.job_id, verdicts), {"progress": progress})

    try:
        run_judge(spec.judge, pairs, ctx, store)
    except OpenRouterError as exc:  # the judge's configuration, not one answer: the server's key, a model id
        raise JobFailed(f"judge_{exc.code}", f"The judge ({spec.judge.model}) failed: {exc.message}",
                        details={"status": exc.status}, user_error=not exc.operator) from None
    ctx.check()


def _result(spec: EvaluationSpec, ctx: JobContext, models: list[tuple[str, str | None]]) -> dict[str, Any]:
    job_id = ctx.job_id
    totals, verdicts, samples = ctx.read(lambda s: (evaluation_service.model_totals(s, job_id),
                                                    evaluation_service.verdict_counts(s, job_id),
                                                    evaluation_service.sampled_rows(s, job_id)))
    by_scoring = totals[models[0][0]]["by_scoring"]
    usable = by_scoring.get("scored", 0) + by_scoring.get("prompt_only", 0)
    if not usable:
        raise JobFailed("no_scorable_examples",
                        f"None of the first {sum(by_scoring.values())} conversations has an assistant turn to score "
                        f"or ends with a user turn to answer, within max_length={spec.max_length} tokens.")
    scores: list[dict[str, Any]] = []
    for label, path in models:
        entry: dict[str, Any] = {"label": label, "model_path": path, **_loss(totals.get(label))}
        if spec.judge is not None and path is not None:
            counts = verdicts.get(label) or Counter()
            entry["judge"] = {**win_rate(counts.get("win", 0), counts.get("tie", 0), counts.get("loss", 0)),
                              "errors": counts.get("error", 0)}
        scores.append(entry)
    base = next((s for s in scores if s["model_path"] is None), None)
    if base is not None and base["mean_loss"] is not None:
        for s in scores:
            if s["mean_loss"] is not None:
                s["loss_vs_base"] = round(s["mean_loss"] - base["mean_loss"], 6)
    result: dict[str, Any] = {
        "base_model": spec.base_model, "examples": usable, "prompt_only": by_scoring.get("prompt_only", 0),
        "skipped": sum(by_scoring.values()) - usable, "models": scores, "best": _best(scores),
        "samples_artifact": _publish_samples(ctx, samples)}
    if spec.judge is not None:
        result["judge"] = {"model": spec.judge.model, "against": spec.judge.against,
                           "interval": "95 % Wilson score interval, ties as half a win"}
    return result


def _best(scores: list[dict[str, Any]]) -> str | None:
    """The model with the lowest mean loss; on a prompt-only set, the judge's highest win rate."""
    by_loss = [s for s in scores if s["mean_loss"] is not None]
    if by_loss:
        return str(min(by_loss, key=lambda s: s["mean_loss"])["label"])
    judged = [s for s in scores if (s.get("judge") or {}).get("win_rate") is not None]
    return str(max(judged, key=lambda s: s["judge"]["win_rate"])["label"]) if judged else None


def _publish_samples(ctx: JobContext, samples: list[Any]) -> str:
    """samples.jsonl: per sampled conversation, its prompt, the reference, each model's reply and verdict."""
    lines: dict[int, dict[str, Any]] = {}
    for r in samples:
        line = lines.setdefault(r.row, {"row": r.row, "messages": r.messages, "reference": r.reference,
                                        "replies": {}, "verdicts": {}})
        line["replies"][r.model] = r.reply
        if r.verdict is not None:
            line["verdicts"][r.model] = {"against": r.opponent, "verdict": r.verdict, "reason": r.reason}
    writer = ctx.artifact_writer("samples.jsonl")
    try:
        for line in lines.values():
            writer.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    [artifact] = ctx.publish_artifacts([{"kind": "evaluation", "name": "samples.jsonl", "writer": writer,
                                         "fmt": "jsonl", "rows": len(lines), "meta": {}}])
    return artifact
