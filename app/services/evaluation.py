"""The eval_sample queries shared by the evaluation worker (per-example results, written in batches) and the
API (the samples route): one row per (job, held-out conversation, model)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, or_, select, update
from sqlalchemy.orm import Session

from app.errors import InvalidRequest, NotFound
from app.models import EvalSample, Job, utcnow

CHUNK = 5000
VERDICTS = ("win", "tie", "loss", "error")


def ensure_rows(session: Session, job_id: str, rows: list[dict[str, Any]]) -> None:
    """Create the job's rows once (dicts with row, model, sampled, messages, reference); a re-run finds them
    and keeps what they hold."""
    if session.scalar(select(func.count()).select_from(EvalSample).where(EvalSample.job_id == job_id)):
        return
    now = utcnow()
    for start in range(0, len(rows), CHUNK):
        session.execute(insert(EvalSample), [{"job_id": job_id, "updated_at": now, **r}
                                             for r in rows[start:start + CHUNK]])


def recorded(session: Session, job_id: str) -> tuple[set[tuple[int, str]], set[tuple[int, str]],
                                                     set[tuple[int, str]]]:
    """(row, model) pairs already scored, already replied, already judged: what a re-run skips."""
    scored: set[tuple[int, str]] = set()
    replied: set[tuple[int, str]] = set()
    judged: set[tuple[int, str]] = set()
    query = select(EvalSample.row, EvalSample.model, EvalSample.scoring, EvalSample.reply, EvalSample.verdict).where(
        EvalSample.job_id == job_id, or_(EvalSample.scoring.is_not(None), EvalSample.reply.is_not(None)))
    for row, model, scoring, reply, verdict in session.execute(query):
        if scoring is not None:
            scored.add((row, model))
        if reply is not None:
            replied.add((row, model))
        if verdict is not None:
            judged.add((row, model))
    return scored, replied, judged


def _batch(columns: tuple[str, ...]) -> Any:
    """One constant UPDATE of these columns by (job, row, model), run as an executemany."""
    kinds = {c: getattr(EvalSample, c).type for c in columns}
    return (update(EvalSample)
            .where(EvalSample.job_id == bindparam("b_job_id"), EvalSample.row == bindparam("b_row"),
                   EvalSample.model == bindparam("b_model"))
            .values(updated_at=bindparam("b_updated_at", type_=EvalSample.updated_at.type),
                    **{c: bindparam(f"b_{c}", type_=kinds[c]) for c in columns}))


_SCORES = _batch(("scoring", "nll", "weight"))
_REPLIES = _batch(("reply",))
_VERDICTS = _batch(("opponent", "verdict", "reason"))


def _write(session: Session, statement: Any, job_id: str, results: list[dict[str, Any]]) -> None:
    if results:
        now = utcnow()
        session.connection().execute(statement, [{"b_job_id": job_id, "b_updated_at": now,
                                                  **{f"b_{k}": v for k, v in r.items()}} for r in results])


def record_scores(session: Session, job_id: str, results: list[dict[str, Any]]) -> None:
    """Store scoring results (dicts with row, model, scoring, nll, weight)."""
    _write(session, _SCORES, job_id, results)


def record_replies(session: Session, job_id: str, results: list[dict[str, Any]]) -> None:
    """Store sampled replies (dicts with row, model, reply)."""
    _write(session, _REPLIES, job_id, results)


def record_verdicts(session: Session, job_id: str, results: list[dict[str, Any]]) -> None:
    """Store verdicts (dicts with row, model, opponent, verdict, reason)."""
    _write(session, _VERDICTS, job_id, results)


def model_totals(session: Session, job_id: str) -> dict[str, dict[str, Any]]:
    """Per model: Σ nll and Σ weight over its scored rows, and its rows counted by scoring outcome."""
    totals: dict[str, dict[str, Any]] = {}
    query = (select(EvalSample.model, EvalSample.scoring, func.count(), func.coalesce(func.sum(EvalSample.nll), 0.0),
                    func.coalesce(func.sum(EvalSample.weight), 0.0))
             .where(EvalSample.job_id == job_id).group_by(EvalSample.model, EvalSample.scoring))
    for model, scoring, count, nll, weight in session.execute(query):
        entry = totals.setdefault(model, {"nll": 0.0, "weight": 0.0, "by_scoring": {}})
        entry["by_scoring"][scoring] = count
        if scoring == "scored":
            entry["nll"], entry["weight"] = float(nll or 0.0), float(weight or 0.0)
    return totals


def verdict_counts(session: Session, job_id: str) -> dict[str, Counter[str]]:
    counts: dict[str, Counter[str]] = {}
    query = (select(EvalSample.model, EvalSample.verdict, func.count()).where(
        EvalSample.job_id == job_id, EvalSample.verdict.is_not(None)).group_by(EvalSample.model, EvalSample.verdict))
    for model, verdict, count in session.execute(query):
        counts.setdefault(model, Counter())[str(verdict)] = count
    return counts


def sampled_rows(session: Session, job_id: str) -> list[Any]:
    """The sampled rows in (row, model) order: what the samples artifact holds."""
    return list(session.execute(select(
        EvalSample.row, EvalSample.model, EvalSample.messages, EvalSample.reference, EvalSample.reply,
        EvalSample.opponent, EvalSample.verdict, EvalSample.reason).where(
        EvalSample.job_id == job_id, EvalSample.sampled.is_(True)).order_by(EvalSample.row, EvalSample.model)))


def _cursor(after: str | None) -> tuple[int, str] | None:
    if after is None:
        return None
    row, sep, model = after.partition(":")
    # ASCII digits only (str.isdigit takes "²"), and a row number SQL can bind
    if not sep or not (row.isascii() and row.isdigit() and len(row) <= 9) or not model:
        raise InvalidRequest(f"after must be a next_cursor of this route (row:model); {after!r} is not.",
                             errors=[{"loc": ["query", "after"], "msg": "not a cursor"}])
    return int(row), model


def list_samples(session: Session, *, team_id: str, job_id: str, model: str | None, verdict: str | None,
                 after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
    """A page of an evaluation job's sampled replies in (row, model) order, each next to its opponent's reply
    and the judge's verdict; and whether more follow."""
    if session.execute(select(Job.id).where(Job.id == job_id, Job.team_id == team_id)).first() is None:
        raise NotFound(f"No job {job_id} in your team.")
    if "\x00" in (model or "") + (after or ""):
        raise InvalidRequest("model and after cannot hold a NUL character.",
                             errors=[{"loc": ["query"], "msg": "NUL character"}])
    wanted = [EvalSample.job_id == job_id, EvalSample.sampled.is_(True)]
    if model is not None:
        wanted.append(EvalSample.model == model)
    if verdict is not None:
        wanted.append(EvalSample.verdict == verdict)
    if (cursor := _cursor(after)) is not None:
        wanted.append(or_(EvalSample.row > cursor[0], and_(EvalSample.row == cursor[0], EvalSample.model > cursor[1])))
    rows = session.execute(select(
        EvalSample.row, EvalSample.model, EvalSample.messages, EvalSample.reference, EvalSample.reply,
        EvalSample.opponent, EvalSample.verdict, EvalSample.reason, EvalSample.scoring, EvalSample.nll,
        EvalSample.weight).where(*wanted).order_by(EvalSample.row, EvalSample.model).limit(limit + 1)).all()
    page = rows[:limit]
    base = {r: reply for r, reply in session.execute(select(EvalSample.row, EvalSample.reply).where(
        EvalSample.job_id == job_id, EvalSample.model == "base",
        EvalSample.row.in_({r.row for r in page if r.opponent == "base"})))} if page else {}
    data = []
    for r in page:
        opponent_reply = base.get(r.row) if r.opponent == "base" else r.reference if r.opponent else None
        data.append({"row": r.row, "model": r.model, "messages": r.messages, "reference": r.reference,
                     "reply": r.reply, "opponent": r.opponent, "opponent_reply": opponent_reply,
                     "verdict": r.verdict, "reason": r.reason,
                     "mean_loss": round(r.nll / r.weight, 6) if r.scoring == "scored" and r.weight else None,
                     "scored_tokens": int(r.weight) if r.scoring == "scored" and r.weight is not None else None})
    return data, len(rows) > limit
