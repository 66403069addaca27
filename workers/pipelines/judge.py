"""The judge of an evaluation job: a model over OpenRouter that compares a candidate's reply with its opponent's
(the base model's, or the set's own reference) for one held-out conversation.

Each pair is judged twice, the candidate shown first (A/B) and second (B/A), so a judge that favours a position
cancels out. An order scores 1 when the judge prefers the candidate, ½ for a tie, 0 otherwise; the two orders
together decide: more than 1 → win, less → loss, exactly 1 → tie (so preferred in both → win, in neither → loss,
one each → tie). A judge answer that cannot be read is a recorded verdict "error", not a crash. Calls go through
`OpenRouterClient` with the server's key and the key's shared pacing the generation jobs use.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from app.schemas.evaluation import JudgeSpec
from workers.clients.openrouter import OpenRouterClient, OpenRouterError
from workers.clients.pacing import Pacer, server_key_limiter
from workers.lease import JobContext

DEFAULT_RUBRIC = "Prefer the reply that is more helpful, correct and clear for the user's last message."
SYSTEM = ("You are an impartial judge. You compare two assistant replies, A and B, to the same conversation and "
          "say which one is better. Judge content, not length or position. Answer only with a JSON object: "
          '{"winner": "A" | "B" | "tie", "reason": "<one short sentence>"}.')
FLUSH_SECONDS = 1.0
_OBJECT = re.compile(r"\{.*\}", re.DOTALL)
# Without JSON, only a "winner: B" / "verdict = tie" phrase counts: a looser reading ("B is better. A rambles.")
# can take the wrong letter, and a wrong verdict is worse than an `error` one.
_LOOSE = re.compile(r"\b(?:[Ww]inner|[Vv]erdict)\s*[:=]\s*\"?(A|B|[Tt]ie)\b")


@dataclass(frozen=True)
class Pair:
    """One candidate reply to judge against its opponent's, for one conversation."""

    row: int
    model: str
    context: list[dict[str, Any]]
    reply: str
    opponent: str  # "base" | "reference"
    opponent_reply: str


def judge_messages(context: list[dict[str, Any]], first: str, second: str, rubric: str | None) -> list[dict[str, str]]:
    transcript = "\n\n".join(f"[{m['role']}]\n{m.get('content') or ''}" for m in context)
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Criteria: {rubric or DEFAULT_RUBRIC}\n\n<conversation>\n{transcript}\n"
                                        f"</conversation>\n\n<reply A>\n{first}\n</reply A>\n\n<reply B>\n{second}\n"
                                        "</reply B>\n\nWhich reply is better? Answer with the JSON object only."}]


def parse_verdict(text: str) -> tuple[str, str]:
    """("A" | "B" | "tie", reason) from a judge's answer: a JSON object (maybe fenced or wrapped in prose), else
    a "winner: A" phrase. ValueError when neither is there."""
    match = _OBJECT.search(text)
    if match is not None:
        try:
            data = orjson.loads(match.group(0))
        except orjson.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            for key in ("winner", "verdict", "preferred", "choice", "better"):
                value = str(data.get(key, "")).strip().strip(".").lower()
                value = value.removeprefix("answer ").removeprefix("reply ").strip()
                if value in ("a", "b", "tie"):
                    return value.upper() if value != "tie" else "tie", str(data.get("reason") or "")[:500]
    loose = _LOOSE.search(text)
    if loose is not None:
        value = loose.group(1).lower()
        return (value.upper() if value != "tie" else "tie"), text.strip()[:500]
    raise ValueError(f"the judge's answer names no winner: {text.strip()[:200]!r}")


def combine(candidate_first: str, candidate_second: str) -> str:
    """The verdict for the candidate from the A/B order's winner (candidate = A) and the B/A order's
    (candidate = B); see the module docstring."""
    score = {"A": 1.0, "tie": 0.5, "B": 0.0}[candidate_first] + {"B": 1.0, "tie": 0.5, "A": 0.0}[candidate_second]
    return "win" if score > 1 else "loss" if score < 1 else "tie"


def win_rate(win: int, tie: int, loss: int) -> dict[str, Any]:
    """{win, tie, loss, n, win_rate, ci95}: win_rate = (win + tie/2)/n, and its 95 % Wilson score interval
    (ties as half a win). Wilson rather than the normal approximation: it stays inside [0, 1] and is sound for
    the few dozen examples an evaluation usually judges, even at a rate of 0 or 1."""
    n = win + tie + loss
    if n == 0:
        return {"win": 0, "tie": 0, "loss": 0, "n": 0, "win_rate": None, "ci95": None}
    p, z = (win + tie / 2) / n, 1.959964
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"win": win, "tie": tie, "loss": loss, "n": n, "win_rate": round(p, 4),
            "ci95": [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]}


def run_judge(judge: JudgeSpec, pairs: list[Pair], ctx: JobContext,
              store: Callable[[list[dict[str, Any]], int], None]) -> None:
    """Judge every pair (`judge.concurrency` pairs in flight); `store(verdicts, judged_so_far)` is called with
    the finished verdicts at most once a second and at the end, from a worker thread. A fatal provider error
    (the server's key or credits refused, an unknown judge model) stops at once and is raised."""
    asyncio.run(_judge_all(judge, pairs, ctx, store))


async def _until_stop(ctx: JobContext) -> None:
    while not ctx.stop_requested:
        await asyncio.sleep(0.25)


async def _judge_all(judge: JudgeSpec, pairs: list[Pair], ctx: JobContext,
                     store: Callable[[list[dict[str, Any]], int], None]) -> None:
    settings = ctx.settings
    assert settings.openrouter_api_key is not None  # checked at submit and by the pipeline
    api_key = settings.openrouter_api_key.get_secret_value()
    key_limiter = server_key_limiter(settings, api_key)
    todo = iter(pairs)
    done: list[dict[str, Any]] = []
    judged = 0
    last_flush = time.monotonic()

    async def one(client: OpenRouterClient, pair: Pair) -> dict[str, Any]:
        async def ask(order: str, first: str, second: str) -> str:
            result = await client.chat(judge_messages(pair.context, first, second, judge.rubric), model=judge.model,
                                       temperature=0.0, max_tokens=300,
                                       extra_headers={"X-Tuneq-Item": f"{ctx.job_id}:{pair.row}:{pair.model}:{order}"})
            return result.content

        out = {"row": pair.row, "model": pair.model, "opponent": pair.opponent}
        try:
            answers = await asyncio.gather(ask("ab", pair.reply, pair.opponent_reply),
                                           ask("ba", pair.opponent_reply, pair.reply))
        except OpenRouterError as exc:
            if exc.fatal:
                raise
            return {**out, "verdict": "error", "reason": f"{exc.code}: {exc.message}"[:500]}
        try:
            (first, why_first), (second, why_second) = map(parse_verdict, answers)
        except ValueError as exc:
            return {**out, "verdict": "error", "reason": str(exc)[:500]}
        reason = why_first if why_first == why_second else f"A/B: {why_first} | B/A: {why_second}"
        return {**out, "verdict": combine(first, second), "reason": reason[:1000]}

    async def worker(client: OpenRouterClient) -> None:
        nonlocal judged, last_flush
        while not ctx.stop_requested and (pair := next(todo, None)) is not None:
            done.append(await one(client, pair))
            judged += 1
            if time.monotonic() - last_flush >= FLUSH_SECONDS:
                batch, done[:] = list(done), []
                last_flush = time.monotonic()
                await asyncio.to_thread(store, batch, judged)

    ctx.waiting_on = f"judge {judge.model} at {settings.openrouter_base_url}"
    try:
        async with OpenRouterClient(api_key=api_key, base_url=settings.openrouter_base_url,
                                    app_name=settings.openrouter_app_name, referer=settings.openrouter_referer,
                                    limiter=Pacer(None, key_limiter), max_connections=2 * judge.concurrency) as client:
            workers = [asyncio.create_task(worker(client)) for _ in range(min(judge.concurrency, len(pairs)))]
            everyone: asyncio.Future[Any] = asyncio.gather(*workers)
            watcher: asyncio.Future[Any] = asyncio.create_task(_until_stop(ctx))  # a cancel, a shutdown: stop now
            try:
                await asyncio.wait({everyone, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if everyone.done():
                    everyone.result()
            except OpenRouterError:
                await asyncio.to_thread(store, done, judged)  # keep what was judged before the fatal answer
                raise
            finally:
                for task in (*workers, watcher):
                    task.cancel()
                await asyncio.gather(*workers, watcher, return_exceptions=True)
    finally:
        ctx.waiting_on = None
        if key_limiter is not None and hasattr(key_limiter, "aclose"):
            await key_limiter.aclose()
    await asyncio.to_thread(store, done, judged)
