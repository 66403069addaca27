"""Generation rules shared by the API (checks at submit, the items route) and the worker:
prompt templates, item variables, dialogue parsing, and the generation_item queries."""

from __future__ import annotations

import functools
import math
import random
import re
from typing import Any

import jinja2
import orjson
from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from app.errors import InvalidRequest, NotFound
from app.models import GenerationItem, Job, utcnow
from app.schemas.generation import GenerationSpec
from app.schemas.taxonomies import TAXONOMIES, Axis
from app.services.templates import ENV as _ENV
from app.services.templates import TemplateError, render_bounded

_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)
ROLE_ALIASES = {"student": "user", "human": "user", "mentor": "assistant", "tutor": "assistant", "gpt": "assistant"}


def compile_template(text: str, field: str = "spec.prompt") -> jinja2.Template:
    try:
        return _ENV.from_string(text)
    except jinja2.TemplateSyntaxError as exc:
        raise InvalidRequest(f"{field}: template error on line {exc.lineno}: {exc.message}",
                             errors=[{"loc": ["body", *field.split("."), "line", exc.lineno], "msg": str(exc.message)}]
                             ) from None
    except RecursionError:
        raise InvalidRequest(f"{field}: the template nests too deeply to compile; flatten its expressions.",
                             errors=[{"loc": ["body", *field.split(".")], "msg": "nested too deeply"}]) from None


def item_count(spec: GenerationSpec, source_rows: int | None = None) -> int:
    if spec.topics is not None:
        return len(spec.topics) * spec.per_topic
    if spec.count is not None:
        return spec.count
    assert source_rows is not None
    return source_rows


@functools.lru_cache(maxsize=64)
def _walk(preset: str, with_topics: bool, seed: int) -> tuple[int, int, tuple[Axis, ...]]:
    """The seed's walk over a preset's taxonomy: a step coprime with the number M of combinations, a seeded
    offset, and each axis's values in a seeded order. Item i takes combination (step·i + offset) mod M, so the first
    M items are M different combinations and a retry or a resume renders the same item the same way."""
    axes = TAXONOMIES[preset][1:] if with_topics else TAXONOMIES[preset]
    size = math.prod(len(values) for _, values in axes)
    # A step near M/φ (golden-ratio hashing) spreads consecutive items across the whole range, so even the
    # first few hundred items see every value of every axis, about equally often.
    step = max(1, round(size * (math.sqrt(5) - 1) / 2))
    while math.gcd(step, size) != 1:
        step += 1
    rng = random.Random(f"tuneq-taxonomy:{preset}:{seed}")
    shuffled = tuple((name, tuple(rng.sample(values, len(values)))) for name, values in axes)
    return step, rng.randrange(size), shuffled


def taxonomy_values(preset: str, seed: int, index: int, *, with_topics: bool = False) -> tuple[dict[str, str], int]:
    """Item `index`'s value on each axis of the preset's taxonomy, and which pass over the taxonomy it is in
    (0 for the first M items, where M is the number of combinations)."""
    step, offset, axes = _walk(preset, with_topics, seed)
    size = math.prod(len(values) for _, values in axes)
    code = (step * index + offset) % size
    chosen: dict[str, str] = {}
    for name, values in reversed(axes):
        code, digit = divmod(code, len(values))
        chosen[name] = values[digit]
    return chosen, index // size


def item_vars(spec: GenerationSpec, resolved: dict[str, Any], index: int, row: Any = None) -> dict[str, Any]:
    """What a template sees for item `index`: a pure function of the spec and the index."""
    values: dict[str, Any] = {**resolved["vars"], "index": index, "seed": spec.seed + index, "variant": 0,
                              "topic": None, "row": row}
    if spec.preset is not None:
        chosen, values["variant"] = taxonomy_values(spec.preset, spec.seed, index, with_topics=spec.topics is not None)
        # Your own vars win over the taxonomy's, so a spec can pin an axis (say, "difficulty").
        values.update({k: v for k, v in chosen.items() if k not in resolved["vars"]})
        values["topic"] = values.get("subject")
    if spec.topics is not None:
        values["topic"] = spec.topics[index // spec.per_topic]
        values["variant"] = index % spec.per_topic
        if spec.preset is not None:
            values["subject"] = values["topic"]
    return values


def render(template: jinja2.Template, values: dict[str, Any]) -> str:
    """Render within the template bounds (app/services/templates.py); `TemplateError` (a ValueError) says what
    went wrong: an undefined variable, a runtime error, or a bound exceeded."""
    return render_bounded(template, values)


def _check_render(template: jinja2.Template, values: dict[str, Any], field: str) -> None:
    try:
        render(template, values)
    except TemplateError as exc:
        raise InvalidRequest(f"{field}: {exc}. A template sees topic, variant, index, seed, row, "
                             "spec.vars and, with a preset, its taxonomy's axes.",
                             errors=[{"loc": ["body", *field.split(".")], "msg": str(exc)}]) from None


def check_spec(spec: GenerationSpec) -> None:
    """Fail at submit when a template cannot render for the first item (with no source rows to read, the
    first item is what every item looks like): syntax, undefined variables, runtime errors, bounds."""
    resolved = spec.resolved()
    template = compile_template(resolved["prompt"])
    system = compile_template(resolved["system"], "spec.system") if resolved["system"] else None
    if spec.source_artifact is None:
        values = item_vars(spec, resolved, 0)
        _check_render(template, values, "spec.prompt")
        if system is not None:
            _check_render(system, values, "spec.system")


def parse_dialogue(content: str) -> list[dict[str, Any]]:
    """The model's JSON dialogue as ChatML messages; ValueError says what was wrong."""
    match = _FENCE.match(content)
    text = match.group(1) if match else content.strip()
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"the reply is not JSON ({exc})") from None
    if isinstance(data, dict):
        data = next((data[k] for k in ("messages", "dialogue", "conversation", "turns") if k in data), None)
    if not isinstance(data, list):
        raise ValueError("the reply has no 'messages' list")
    messages = []
    for i, turn in enumerate(data):
        if not isinstance(turn, dict):
            raise ValueError(f"messages[{i}] is not an object")
        role = str(turn.get("role", turn.get("from", ""))).lower()
        messages.append({"role": ROLE_ALIASES.get(role, role), "content": turn.get("content", turn.get("value"))})
    return messages


# ---- generation_item queries ------------------------------------------------------------------


def ensure_items(session: Session, job_id: str, n: int) -> None:
    """Create the item rows once; a re-run finds them and keeps their results."""
    have = session.scalar(select(func.count()).select_from(GenerationItem).where(GenerationItem.job_id == job_id))
    if have:
        return
    now = utcnow()
    for start in range(0, n, 5000):
        session.execute(insert(GenerationItem), [
            {"job_id": job_id, "index": i, "status": "pending", "attempts": 0, "prompt_tokens": 0,
             "completion_tokens": 0, "cost_usd": 0.0, "updated_at": now}
            for i in range(start, min(n, start + 5000))
        ])


def retry_outage_failures(session: Session, job_id: str, codes: tuple[str, ...]) -> int:
    """A new run of the job (a retry, a resume, a takeover) calls the provider again for the items an outage
    failed (`codes`); items the provider or the template refused stay failed. Returns how many."""
    rows = session.execute(select(GenerationItem.index, GenerationItem.error).where(
        GenerationItem.job_id == job_id, GenerationItem.status == "failed")).all()
    again = [r.index for r in rows if (r.error or {}).get("code") in codes]
    for start in range(0, len(again), 5000):
        session.execute(update(GenerationItem).where(
            GenerationItem.job_id == job_id, GenerationItem.index.in_(again[start:start + 5000])
        ).values(status="pending", error=None, updated_at=utcnow()))
    return len(again)


def failure_example(session: Session, job_id: str, code: str) -> str:
    """The message of one failed item with this error code (the first by index)."""
    for err in session.execute(select(GenerationItem.error).where(
            GenerationItem.job_id == job_id, GenerationItem.status == "failed").order_by(GenerationItem.index)
            ).scalars():
        if (err or {}).get("code", "unknown") == code:
            return str((err or {}).get("message") or "")[:300]
    return ""


def pending_indices(session: Session, job_id: str) -> list[int]:
    return list(session.scalars(select(GenerationItem.index).where(
        GenerationItem.job_id == job_id, GenerationItem.status == "pending").order_by(GenerationItem.index)))


_RECORD = (
    update(GenerationItem)
    .where(GenerationItem.job_id == bindparam("b_job_id"), GenerationItem.index == bindparam("b_index"))
    .values(status=bindparam("b_status"), attempts=GenerationItem.attempts + bindparam("b_attempts"),
            output=bindparam("b_output", type_=GenerationItem.output.type),
            prompt_tokens=bindparam("b_prompt_tokens"), completion_tokens=bindparam("b_completion_tokens"),
            cost_usd=bindparam("b_cost_usd"), error=bindparam("b_error", type_=GenerationItem.error.type),
            updated_at=bindparam("b_updated_at", type_=GenerationItem.updated_at.type))
)


def record(session: Session, job_id: str, results: list[dict[str, Any]]) -> None:
    """Store finished items (dicts with index, status, attempts, output, tokens, cost, error): one
    executemany of a constant statement."""
    if not results:
        return
    now = utcnow()
    session.connection().execute(_RECORD, [
        {"b_job_id": job_id, "b_index": r["index"], "b_status": r["status"], "b_attempts": r["attempts"],
         "b_output": r.get("output"), "b_prompt_tokens": r.get("prompt_tokens", 0),
         "b_completion_tokens": r.get("completion_tokens", 0), "b_cost_usd": r.get("cost_usd", 0.0),
         "b_error": r.get("error"), "b_updated_at": now}
        for r in results
    ])


def totals(session: Session, job_id: str) -> dict[str, Any]:
    row = session.execute(select(
        func.count(), func.coalesce(func.sum(GenerationItem.cost_usd), 0.0),
        func.coalesce(func.sum(GenerationItem.attempts), 0),
        func.coalesce(func.sum(GenerationItem.prompt_tokens), 0),
        func.coalesce(func.sum(GenerationItem.completion_tokens), 0),
    ).where(GenerationItem.job_id == job_id)).one()
    by_status = dict(session.execute(select(GenerationItem.status, func.count()).where(
        GenerationItem.job_id == job_id).group_by(GenerationItem.status)).tuples().all())
    return {"items": row[0], "cost_usd": float(row[1]), "calls": int(row[2]), "prompt_tokens": int(row[3]),
            "completion_tokens": int(row[4]), "by_status": by_status}


def failures_by_reason(session: Session, job_id: str) -> dict[str, int]:
    rows = session.execute(select(GenerationItem.error).where(GenerationItem.job_id == job_id,
                                                             GenerationItem.status == "failed")).scalars()
    counts: dict[str, int] = {}
    for err in rows:
        code = (err or {}).get("code", "unknown")
        counts[code] = counts.get(code, 0) + 1
    return counts


def ok_outputs(session: Session, job_id: str) -> Any:
    return session.execute(select(GenerationItem.index, GenerationItem.output).where(
        GenerationItem.job_id == job_id, GenerationItem.status == "ok").order_by(GenerationItem.index)
        .execution_options(yield_per=1000))


def list_items(session: Session, *, team_id: str, job_id: str, status: str | None, after: int, limit: int
               ) -> tuple[list[dict[str, Any]], bool]:
    if session.execute(select(Job.id).where(Job.id == job_id, Job.team_id == team_id)).first() is None:
        raise NotFound(f"No job {job_id} in your team.")
    query = select(GenerationItem.index, GenerationItem.status, GenerationItem.attempts, GenerationItem.output,
                   GenerationItem.prompt_tokens, GenerationItem.completion_tokens, GenerationItem.cost_usd,
                   GenerationItem.error).where(GenerationItem.job_id == job_id, GenerationItem.index > after)
    if status:
        query = query.where(GenerationItem.status == status)
    rows = session.execute(query.order_by(GenerationItem.index).limit(limit + 1)).all()
    return [r._asdict() for r in rows[:limit]], len(rows) > limit
