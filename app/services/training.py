"""Checkpoints and metrics of training jobs: what the worker records and the API reads back."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.orm import Session

from app.db import session_scope
from app.errors import InvalidRequest, NotFound
from app.models import Checkpoint, Job, Metric, new_id, row_dict, utcnow

CHECKPOINT_COLUMNS = (Checkpoint.id, Checkpoint.step, Checkpoint.kind, Checkpoint.uri, Checkpoint.sampler_uri,
                      Checkpoint.next_step, Checkpoint.loss, Checkpoint.val_loss, Checkpoint.eval_loss,
                      Checkpoint.data, Checkpoint.created_at)


def _owned(session: Session, team_id: str, job_id: str) -> None:
    if session.execute(select(Job.id).where(Job.id == job_id, Job.team_id == team_id)).first() is None:
        raise NotFound(f"No job {job_id} in your team.")


def latest_checkpoint(session: Session, job_id: str, kind: str = "state", *, team_id: str | None = None) -> Any:
    """The newest checkpoint of a job of this kind ("state": resumable; "sampler": sampleable), or None;
    with `team_id`, only if the job is that team's."""
    query = select(*CHECKPOINT_COLUMNS).where(Checkpoint.job_id == job_id, Checkpoint.kind == kind)
    if team_id is not None:
        query = query.join(Job, Job.id == Checkpoint.job_id).where(Job.team_id == team_id)
    return session.execute(query.order_by(Checkpoint.next_step.desc(), Checkpoint.created_at.desc()).limit(1)).first()


def add_checkpoint(session: Session, *, job_id: str, step: int, kind: str, uri: str, next_step: int,
                   data: dict[str, Any], sampler_uri: str | None = None, loss: float | None = None,
                   val_loss: float | None = None) -> str:
    checkpoint_id = new_id("ckpt")
    session.execute(insert(Checkpoint).values(id=checkpoint_id, job_id=job_id, step=step, kind=kind, uri=uri,
                                              sampler_uri=sampler_uri, next_step=next_step, data=data, loss=loss,
                                              val_loss=val_loss, created_at=utcnow()))
    return checkpoint_id


def set_eval_loss(session: Session, checkpoint_id: str, eval_loss: float) -> None:
    session.execute(update(Checkpoint).where(Checkpoint.id == checkpoint_id).values(eval_loss=eval_loss))


@dataclass(frozen=True)
class SamplerCheckpoint:
    """A checkpoint of a job that can be sampled, with its auto-evaluation score (None until scored)."""

    id: str
    step: int
    sampler_path: str
    eval_loss: float | None


def sampler_checkpoints(session: Session, job_id: str) -> list[SamplerCheckpoint]:
    """A job's checkpoints with sampler weights (either layout), in step order."""
    rows = session.execute(
        select(Checkpoint.id, Checkpoint.step, Checkpoint.kind, Checkpoint.uri, Checkpoint.sampler_uri,
               Checkpoint.eval_loss)
        .where(Checkpoint.job_id == job_id, or_(Checkpoint.kind == "sampler", Checkpoint.sampler_uri.is_not(None)))
        .order_by(Checkpoint.step, Checkpoint.created_at)).all()
    return [SamplerCheckpoint(r.id, r.step, r.uri if r.kind == "sampler" else r.sampler_uri, r.eval_loss)
            for r in rows]


def owns_tinker_path(session: Session, *, team_id: str, uri: str) -> bool:
    """Whether `uri` is one of the team's recorded checkpoints (a state or sampler weights). One Tinker key
    serves every team, so a path is only usable by the team that made it."""
    return session.execute(select(Checkpoint.id).join(Job, Job.id == Checkpoint.job_id)
                           .where(or_(Checkpoint.uri == uri, Checkpoint.sampler_uri == uri), Job.team_id == team_id)
                           .limit(1)).first() is not None


@dataclass(frozen=True)
class CheckpointPaths:
    """What one checkpoint of a team can be used as: resumed or exported (`state_path`), sampled
    (`sampler_path`); either is None when the run did not save it at that step."""

    id: str
    job_id: str
    step: int
    state_path: str | None
    sampler_path: str | None


def checkpoint_paths(session: Session, *, team_id: str, ref: str) -> CheckpointPaths:
    """A checkpoint id of the team, or a tinker:// path (state or sampler) of one of its checkpoints → its
    paths. A sampler row of an older run (kind "sampler") is paired with the state saved at the same step."""
    query = select(Checkpoint).join(Job, Job.id == Checkpoint.job_id).where(Job.team_id == team_id)
    if ref.startswith("tinker://"):
        query = query.where(or_(Checkpoint.uri == ref, Checkpoint.sampler_uri == ref))
    else:
        query = query.where(Checkpoint.id == ref)
    row = session.scalars(query.order_by(Checkpoint.created_at.desc()).limit(1)).first()
    if row is None:
        raise NotFound(f"No checkpoint {ref} in your team; checkpoint ids are listed at "
                       "GET /v1/jobs/{id}/checkpoints.")
    if row.kind != "sampler":
        return CheckpointPaths(row.id, row.job_id, row.step, row.uri, row.sampler_uri)
    state = session.scalar(select(Checkpoint.uri).where(Checkpoint.job_id == row.job_id, Checkpoint.step == row.step,
                                                        Checkpoint.kind == "state").limit(1))
    return CheckpointPaths(row.id, row.job_id, row.step, state, row.uri)


def resolve_checkpoint(session: Session, *, team_id: str, ref: str) -> str:
    """A checkpoint id of the team, or a tinker:// path of one of its checkpoints → its tinker:// path.
    Checked again when the job runs, so a worker never uses another team's weights."""
    if ref.startswith("tinker://"):
        if not owns_tinker_path(session, team_id=team_id, uri=ref):
            raise NotFound(f"{ref} is not a checkpoint of your team; use a checkpoint id from "
                           "GET /v1/jobs/{id}/checkpoints.")
        return ref
    uri = session.scalar(select(Checkpoint.uri).join(Job, Job.id == Checkpoint.job_id)
                         .where(Checkpoint.id == ref, Job.team_id == team_id))
    if uri is None:
        raise NotFound(f"No checkpoint {ref} in your team.")
    return uri


def sampler_path(session: Session, *, team_id: str, ref: str) -> str:
    """The sampler weights of a team's checkpoint (an id or a tinker:// path): what evaluation and chat sample."""
    paths = checkpoint_paths(session, team_id=team_id, ref=ref)
    if paths.sampler_path is None:
        raise NotFound(f"Checkpoint {ref} (step {paths.step}) has no sampler weights: only its training state was "
                       "saved. Use a checkpoint whose sampler_uri is set (GET /v1/jobs/{id}/checkpoints); "
                       "sampler_every decides which steps save them.")
    return paths.sampler_path


def latest_sampler_path(session: Session, job_id: str, *, team_id: str) -> str | None:
    """The newest sampler weights a job of the team saved (a finished run's final ones), or None."""
    row = session.execute(
        select(Checkpoint.kind, Checkpoint.uri, Checkpoint.sampler_uri).join(Job, Job.id == Checkpoint.job_id)
        .where(Checkpoint.job_id == job_id, Job.team_id == team_id,
               or_(Checkpoint.kind == "sampler", Checkpoint.sampler_uri.is_not(None)))
        .order_by(Checkpoint.step.desc(), Checkpoint.created_at.desc()).limit(1)).first()
    if row is None:
        return None
    return row.uri if row.kind == "sampler" else row.sampler_uri


def list_checkpoints(session: Session, *, team_id: str, job_id: str, after: str | None = None,
                     limit: int | None = None) -> tuple[list[dict[str, Any]], bool]:
    """A page of a job's checkpoints in (step, id) order after the checkpoint `after`, and whether more follow."""
    _owned(session, team_id, job_id)
    query = select(*CHECKPOINT_COLUMNS).where(Checkpoint.job_id == job_id)
    if after is not None:
        step = session.scalar(select(Checkpoint.step).where(Checkpoint.job_id == job_id, Checkpoint.id == after))
        if step is None:
            raise InvalidRequest(f"after must be the id of one of this job's checkpoints (a next_cursor); {after!r} "
                                 "is not.", errors=[{"loc": ["query", "after"], "msg": "unknown checkpoint"}])
        query = query.where(or_(Checkpoint.step > step, and_(Checkpoint.step == step, Checkpoint.id > after)))
    query = query.order_by(Checkpoint.step, Checkpoint.id)
    rows = session.execute(query if limit is None else query.limit(limit + 1)).all()
    more = limit is not None and len(rows) > limit
    return [row_dict(r, "created_at") for r in rows[:limit]], more


def forget_metrics_from(session: Session, job_id: str, step: int) -> None:
    """A resumed run redoes the steps after its checkpoint; their old values go."""
    session.execute(delete(Metric).where(Metric.job_id == job_id, Metric.step >= step))


def record_metrics(session: Session, job_id: str, step: int, values: dict[str, float]) -> None:
    session.execute(delete(Metric).where(Metric.job_id == job_id, Metric.step == step,
                                         Metric.name.in_(list(values))))
    session.execute(insert(Metric), [{"job_id": job_id, "step": step, "name": k, "value": float(v)}
                                     for k, v in values.items()])


def metric_value(session: Session, job_id: str, name: str, step: int) -> float | None:
    return session.scalar(select(Metric.value).where(Metric.job_id == job_id, Metric.name == name,
                                                     Metric.step == step))


def metric_series(session: Session, *, team_id: str, job_id: str, names: list[str] | None,
                  after_step: int, limit: int | None = None) -> tuple[dict[str, list[list[float]]], int | None]:
    """Series of [step, value] per name for at most `limit` steps after `after_step`; and the last step of the
    page when more steps follow (the next page's `after_step`), else None."""
    _owned(session, team_id, job_id)
    wanted = [Metric.job_id == job_id, Metric.step > after_step]
    if names:
        wanted.append(Metric.name.in_(names))
    next_cursor = None
    if limit is not None:
        steps = session.scalars(select(Metric.step).where(*wanted).distinct().order_by(Metric.step)
                                .limit(limit + 1)).all()
        if not steps:
            return {}, None
        page = steps[:limit]
        wanted.append(Metric.step <= page[-1])
        next_cursor = page[-1] if len(steps) > limit else None
    series: dict[str, list[list[float]]] = {}
    query = select(Metric.name, Metric.step, Metric.value).where(*wanted)
    for name, step, value in session.execute(query.order_by(Metric.name, Metric.step)):
        series.setdefault(name, []).append([step, value])
    return series, next_cursor


def owned_job(session: Session, *, team_id: str, job_id: str) -> None:
    """NotFound unless the job is the team's (checked before a streamed download starts)."""
    _owned(session, team_id, job_id)


def iter_metric_rows(job_id: str, names: list[str] | None, after_step: int,
                     chunk: int = 5000) -> Iterator[list[tuple[int, str, float]]]:
    """Every (step, name, value) of a job in step order, read in keyset-paged chunks, each in a short session
    of its own, so a long download holds neither memory nor a transaction."""
    last: tuple[int, str] | None = None
    while True:
        query = select(Metric.step, Metric.name, Metric.value).where(Metric.job_id == job_id,
                                                                     Metric.step > after_step)
        if names:
            query = query.where(Metric.name.in_(names))
        if last is not None:
            query = query.where(or_(Metric.step > last[0], and_(Metric.step == last[0], Metric.name > last[1])))
        with session_scope() as session:
            rows = [(r.step, r.name, r.value) for r in
                    session.execute(query.order_by(Metric.step, Metric.name).limit(chunk))]
        if not rows:
            return
        yield rows
        if len(rows) < chunk:
            return
        last = (rows[-1][0], rows[-1][1])
