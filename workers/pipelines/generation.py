"""Generation jobs: synthetic dialogues from an OpenAI-compatible chat API (docs/architecture.md, "Pipelines and resumability").

One `generation_item` row per item. Items are called concurrently on one event loop, paced by the rate
limiter; finished items are group-committed (each commit is a fenced write that also renews the lease)
before their slot makes another call, so a re-run after a crash only calls the provider for items that
were pending or in flight.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import jinja2
import orjson

from app.chat import conversation_hash, validate_conversation
from app.db import session_scope
from app.errors import InvalidRequest
from app.schemas.generation import GenerationSpec
from app.services import artifacts as artifacts_service
from app.services import generation as generation_service
from app.services.transitions import LeaseLost
from workers.clients.openrouter import OUTAGE_CODES, ChatResult, OpenRouterClient, OpenRouterError
from workers.clients.pacing import Pacer, RateLimiter, SharedRateLimiter, server_key_limiter
from workers.clients.pricing import CostMeter
from workers.errors import JobFailed
from workers.lease import JobContext
from workers.sources import iter_file_rows

EVENT_SECONDS = 5.0


@dataclass
class Run:
    """What one attempt of the job has seen so far."""

    total: int
    done_before: int
    spent: float
    started: float = field(default_factory=time.monotonic)
    done_now: int = 0
    failed_now: int = 0
    stop_reason: str | None = None
    fatal: OpenRouterError | None = None
    unpriced: int = 0  # replies whose cost neither the provider nor a price told (no max_cost_usd to enforce)
    cost_sources: set[str] = field(default_factory=set)


def run(spec_dict: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    spec = GenerationSpec.model_validate(spec_dict)
    settings = ctx.settings
    if settings.openrouter_api_key is None:
        raise JobFailed("missing_api_key", "OPENROUTER_API_KEY is not set on the workers; ask an operator to set it.")
    resolved = spec.resolved()
    rows = _source_rows(spec, ctx) if spec.source_artifact else None
    n = generation_service.item_count(spec, len(rows) if rows is not None else None)
    templates = _compile(resolved)
    with session_scope() as session:
        generation_service.ensure_items(session, ctx.job_id, n)
        generation_service.retry_outage_failures(session, ctx.job_id, OUTAGE_CODES)
        pending = generation_service.pending_indices(session, ctx.job_id)
        before = generation_service.totals(session, ctx.job_id)
    state = Run(total=n, done_before=n - len(pending), spent=before["cost_usd"])
    ctx.event("plan", {"items": n, "pending": len(pending), "done_before": state.done_before,
                       "spent_before_usd": round(state.spent, 6),
                       "key_requests_per_second": settings.openrouter_requests_per_second})

    asyncio.run(_generate(spec, resolved, templates, rows, pending, ctx, state))
    if state.fatal is not None:
        # Configuration the spec (model, prompt) or an operator (the server's key, credits, prices) must fix.
        raise JobFailed(state.fatal.code, state.fatal.message, details={"status": state.fatal.status},
                        user_error=not state.fatal.operator)
    ctx.check()  # lease lost → stop; cancel requested → cancelled (what was made is kept in the items)
    _fail_if_nothing_made(ctx)
    return _write_output(spec, ctx, state)


def _compile(resolved: dict[str, Any]) -> tuple[jinja2.Template, jinja2.Template | None]:
    try:
        return (generation_service.compile_template(resolved["prompt"]),
                generation_service.compile_template(resolved["system"], "spec.system") if resolved["system"] else None)
    except InvalidRequest as exc:  # checked at submit; a server with other bounds may still refuse it
        raise JobFailed("invalid_template", exc.detail) from None


def _fail_if_nothing_made(ctx: JobContext) -> None:
    """A job whose every item failed has nothing to show: it fails, saying how many and the usual reason."""
    with session_scope() as session:
        by_status = generation_service.totals(session, ctx.job_id)["by_status"]
        failures = generation_service.failures_by_reason(session, ctx.job_id)
        if by_status.get("ok", 0) or by_status.get("pending", 0) or not failures:
            return
        code, count = max(failures.items(), key=lambda kv: kv[1])
        example = generation_service.failure_example(session, ctx.job_id, code)
    failed = sum(failures.values())
    details = {"failed_items": failed, "failed_by_reason": failures}
    if code in OUTAGE_CODES:
        raise JobFailed("provider_unavailable",
                        f"All {failed} items failed because the model provider could not be reached or kept "
                        f"failing ({count} × {code}: {example}). This is an outage, not your spec: the job can be "
                        f"resumed with POST /v1/jobs/{ctx.job_id}/resume, which retries those items.",
                        user_error=False, details=details)
    raise JobFailed("all_items_failed",
                    f"All {failed} items failed; the most common reason ({count} of them) is {code}: {example}. "
                    f"GET /v1/jobs/{ctx.job_id}/items?status=failed lists every failure.",
                    details=details)


def _source_rows(spec: GenerationSpec, ctx: JobContext) -> list[dict[str, Any]]:
    assert isinstance(spec.source_artifact, str)  # references are resolved before a job is queued
    with session_scope() as session:
        path, meta = artifacts_service.path_of(session, team_id=ctx.team_id, artifact_id=spec.source_artifact)
    fmt = "jsonl" if meta["format"] == "chatml_jsonl" else meta["format"]
    return [row for _, row in iter_file_rows(path, fmt)]


def _prompt(spec: GenerationSpec, resolved: dict[str, Any], templates: tuple[jinja2.Template, jinja2.Template | None],
            rows: list[dict[str, Any]] | None, index: int) -> list[dict[str, str]]:
    values = generation_service.item_vars(spec, resolved, index, rows[index] if rows is not None else None)
    messages = []
    if templates[1] is not None:
        messages.append({"role": "system", "content": generation_service.render(templates[1], values)})
    messages.append({"role": "user", "content": generation_service.render(templates[0], values)})
    return messages


def _outcome(index: int, *, status: str, calls: int, output: Any = None, error: dict[str, Any] | None = None,
             usage: ChatResult | None = None, cost: float | None = None) -> dict[str, Any]:
    out = {"index": index, "status": status, "attempts": calls, "output": output, "error": error}
    if usage is not None:
        out.update(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                   cost_usd=cost or 0.0)
    return out


def _cost_unknown(spec: GenerationSpec, base_url: str) -> OpenRouterError:
    return OpenRouterError(
        "cost_unknown",
        f"The provider at {base_url} reports no usage.cost and no price is known for model {spec.model!r} "
        f"(neither TUNEQ_GENERATION_PRICES nor {base_url}/models lists it), so max_cost_usd cannot be enforced: "
        "ask an operator to add the model's price to TUNEQ_GENERATION_PRICES (or choose a model with a known "
        "price), then resume the job.", fatal=True)


def _to_chatml(output: str, prompt: list[dict[str, str]], content: str) -> tuple[list[Any] | None, str | None]:
    """The item's ChatML conversation, or the reason it is unusable."""
    if output == "completion":
        messages: list[Any] = [*prompt, {"role": "assistant", "content": content}]
    else:
        try:
            messages = generation_service.parse_dialogue(content)
        except ValueError as exc:
            return None, f"bad_output: {exc}"
    problem = validate_conversation(messages)
    if problem is not None:
        return None, f"{problem.reason}: {problem.field}: {problem.message}"
    return messages, None


async def _generate(spec: GenerationSpec, resolved: dict[str, Any],
                    templates: tuple[jinja2.Template, jinja2.Template | None], rows: list[dict[str, Any]] | None,
                    pending: list[int], ctx: JobContext, state: Run) -> None:
    settings = ctx.settings
    assert settings.openrouter_api_key is not None
    sampling = {"temperature": resolved["temperature"], "top_p": resolved["top_p"],
                "max_tokens": resolved["max_tokens"]}
    response_format = {"type": "json_object"} if resolved["output"] == "dialogue" else None
    todo = iter(pending)
    stop = asyncio.Event()

    def should_stop() -> bool:
        if ctx.stop_requested:  # cancel, worker shutdown, or the lease is gone
            state.stop_reason = state.stop_reason or "cancelled"
            stop.set()
        elif spec.max_cost_usd is not None and state.spent >= spec.max_cost_usd:
            state.stop_reason = state.stop_reason or "budget"
            stop.set()
        return stop.is_set()

    async def one(client: OpenRouterClient, index: int) -> dict[str, Any]:
        try:
            prompt = _prompt(spec, resolved, templates, rows, index)
        except ValueError as exc:
            return _outcome(index, status="failed", calls=0, error={"code": "template_error", "message": str(exc)})
        try:
            # Each item its own provider seed (the `seed` its template sees): one seed for all would make
            # near-identical replies; a retry of the item sends the same one.
            result = await client.chat(prompt, model=spec.model, response_format=response_format,
                                       extra_headers={"X-Tuneq-Item": f"{ctx.job_id}:{index}"},
                                       seed=spec.seed + index, **sampling)
        except OpenRouterError as exc:
            if exc.fatal:
                state.fatal = state.fatal or exc
                stop.set()
                raise
            return _outcome(index, status="failed", calls=exc.calls, error={"code": exc.code, "message": exc.message})
        cost = await meter.cost(cost_usd=result.cost_usd, prompt_tokens=result.prompt_tokens,
                                completion_tokens=result.completion_tokens, models=(spec.model, result.model))
        if cost is None:
            if spec.max_cost_usd is not None:  # a budget nobody can count must not run on
                state.fatal = state.fatal or _cost_unknown(spec, settings.openrouter_base_url)
                stop.set()
            state.unpriced += 1
        messages, problem = _to_chatml(resolved["output"], prompt, result.content)
        if messages is None:
            assert problem is not None
            code, _, message = problem.partition(": ")
            return _outcome(index, status="failed", calls=result.calls, usage=result, cost=cost,
                            error={"code": code, "message": message, "reply_head": result.content[:300]})
        return _outcome(index, status="ok", calls=result.calls, output=messages, usage=result, cost=cost)

    async def worker(client: OpenRouterClient) -> None:
        while not should_stop():
            index = next(todo, None)
            if index is None:
                return
            outcome = await one(client, index)
            state.spent += outcome.get("cost_usd", 0.0)
            state.done_now += 1
            state.failed_now += outcome["status"] == "failed"
            await writer.store(outcome)  # durable before this slot makes another call

    writer = GroupWriter(ctx, state, stop)
    api_key = settings.openrouter_api_key.get_secret_value()
    key_limiter = server_key_limiter(settings, api_key)
    pacer = Pacer(RateLimiter(spec.requests_per_second) if spec.requests_per_second else None, key_limiter)
    async with OpenRouterClient(api_key=api_key, base_url=settings.openrouter_base_url,
                                app_name=settings.openrouter_app_name, referer=settings.openrouter_referer,
                                max_attempts=spec.max_attempts_per_item, limiter=pacer,
                                max_connections=spec.concurrency) as client:
        meter = CostMeter(base_url=settings.openrouter_base_url, fetch=client.list_models,
                          table=settings.generation_prices, ttl=settings.openrouter_models_cache_seconds)
        workers = [asyncio.create_task(worker(client)) for _ in range(min(spec.concurrency, len(pending)))]
        writer_task = asyncio.create_task(writer.run())
        stopper: asyncio.Task[Any] = asyncio.create_task(stop.wait())
        # A cancel or a shutdown must interrupt calls in flight too, not wait for the next item.
        watcher = asyncio.create_task(_watch(should_stop))
        watch: set[asyncio.Task[Any]] = {*workers, stopper, writer_task}
        ctx.waiting_on = f"{spec.model} replies from {settings.openrouter_base_url}"
        try:
            while watch - {stopper, writer_task}:
                done, watch = await asyncio.wait(watch, return_when=asyncio.FIRST_COMPLETED)
                if writer_task in done:
                    # The writer never ends on its own: a crash (say, the database stayed away) ends the
                    # pipeline instead of leaving every item waiting on a write that will not come.
                    raise writer_task.exception() or RuntimeError("the item writer stopped")
                if stopper in done and state.stop_reason != "budget":
                    # Cancelled, a fatal provider error, or the lease is gone: no further calls, at once.
                    break
                for task in done - {stopper}:
                    exc = task.exception()
                    if exc is not None and not isinstance(exc, OpenRouterError):
                        raise exc
        finally:
            ctx.waiting_on = None
            for task in (*watch, watcher):
                task.cancel()
            await asyncio.gather(*watch, watcher, return_exceptions=True)
            state.cost_sources |= meter.sources
            if isinstance(key_limiter, SharedRateLimiter):
                await key_limiter.aclose()
    await asyncio.to_thread(_flush, ctx, state, [], True)


async def _watch(should_stop: Any) -> None:
    while not should_stop():
        await asyncio.sleep(0.25)


class GroupWriter:
    """Group commit: results that finish while a write is running go together in the next one, and each
    caller resumes only once its result is stored, so a crash loses at most the calls in flight."""

    def __init__(self, ctx: JobContext, state: Run, stop: asyncio.Event) -> None:
        self.ctx, self.state, self.stop = ctx, state, stop
        self.queue: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self.wakeup = asyncio.Event()
        self.last_event = time.monotonic()

    async def store(self, outcome: dict[str, Any]) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queue.append((outcome, done))
        self.wakeup.set()
        await done

    async def run(self) -> None:
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            batch, self.queue = self.queue, []
            milestone = time.monotonic() - self.last_event >= EVENT_SECONDS
            try:
                await asyncio.to_thread(_flush, self.ctx, self.state, [o for o, _ in batch], milestone)
            except LeaseLost as exc:
                self.ctx.lease_lost.set()
                self.stop.set()
                for _, done in batch:
                    done.set_exception(exc)
                continue
            except BaseException as exc:  # the pipeline sees this task end and stops
                for _, done in [*batch, *self.queue]:
                    if not done.done():
                        done.set_exception(exc if isinstance(exc, Exception) else RuntimeError("writer stopped"))
                raise
            if milestone:
                self.last_event = time.monotonic()
            for _, done in batch:
                done.set_result(None)


def _flush(ctx: JobContext, state: Run, results: list[dict[str, Any]], event: bool) -> None:
    """Store finished items and progress in one fenced transaction (which also renews the lease)."""
    done = state.done_before + state.done_now
    elapsed = time.monotonic() - state.started
    rate = state.done_now / elapsed if elapsed > 0 else 0.0
    progress = {"done": done, "total": state.total, "unit": "items", "failed": state.failed_now,
                "cost_usd": round(state.spent, 6),
                "eta_seconds": round((state.total - done) / rate, 1) if rate else None}
    ctx.write(lambda session: generation_service.record(session, ctx.job_id, results), {"progress": progress},
              [("progress", progress)] if event else None)


def _write_output(spec: GenerationSpec, ctx: JobContext, state: Run) -> dict[str, Any]:
    writer = ctx.artifact_writer("generated.jsonl")
    seen: set[bytes] = set()
    rows = duplicates = 0
    try:
        with session_scope() as session:
            for _, output in generation_service.ok_outputs(session, ctx.job_id):
                if spec.dedupe:
                    key = conversation_hash(output)
                    if key in seen:
                        duplicates += 1
                        continue
                    seen.add(key)
                writer.write(orjson.dumps({"messages": output}, option=orjson.OPT_APPEND_NEWLINE))
                rows += 1
            totals = generation_service.totals(session, ctx.job_id)
            failures = generation_service.failures_by_reason(session, ctx.job_id)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    by_status = totals["by_status"]
    stats = {"items": state.total, "ok": by_status.get("ok", 0), "failed": by_status.get("failed", 0),
             "pending": by_status.get("pending", 0), "failed_by_reason": failures, "duplicates_dropped": duplicates,
             "prompt_tokens": totals["prompt_tokens"], "completion_tokens": totals["completion_tokens"],
             "cost_usd": round(totals["cost_usd"], 6), "calls": totals["calls"],
             "retries": max(0, totals["calls"] - by_status.get("ok", 0) - by_status.get("failed", 0)),
             "cost_source": sorted(state.cost_sources)}
    [artifact_id] = ctx.publish_artifacts([{"kind": "dataset", "name": "generated.jsonl", "writer": writer,
                                             "fmt": "chatml_jsonl", "rows": rows, "meta": {"split": "train"}}])
    result: dict[str, Any] = {"artifact": artifact_id, "train_artifact": artifact_id, "rows": rows,
                              "failed_items": stats["failed"], **stats}
    if stats["failed"]:
        ctx.event("warning", {"code": "items_failed", "failed_items": stats["failed"], "failed_by_reason": failures,
                              "message": f"{stats['failed']} of {state.total} items failed; the dataset has the "
                                         f"{stats['ok']} that succeeded (GET /v1/jobs/{ctx.job_id}/items?status=failed)"})
    if state.unpriced:
        ctx.event("warning", {"code": "cost_unknown", "items": state.unpriced,
                              "message": f"{state.unpriced} replies reported no usage.cost and no price is known "
                                         f"for {spec.model!r}: cost_usd leaves them out"})
    if state.stop_reason == "budget":
        result["stop_reason"] = (f"max_cost_usd reached: spent ${totals['cost_usd']:.4f} of ${spec.max_cost_usd}; "
                                 f"{stats['pending']} items were not generated")
        ctx.event("budget_reached", {"spent_usd": totals["cost_usd"], "max_cost_usd": spec.max_cost_usd})
    return result
