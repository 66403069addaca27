"""Checkpoints and metrics of training jobs: what the worker records and the API reads back."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from app.errors import NotFound
from app.models import Checkpoint, Job, Metric, new_id, row_dict, utcnow

CHECKPOINT_COLUMNS = (Checkpoint.id, Checkpoint.step, Checkpoint.kind, Checkpoint.uri, Checkpoint.next_step,
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
                   data: dict[str, Any]) -> str:
    checkpoint_id = new_id("ckpt")
    session.execute(insert(Checkpoint).values(id=checkpoint_id, job_id=job_id, step=step, kind=kind, uri=uri,
                                              next_step=next_step, data=data, created_at=utcnow()))
    return checkpoint_id


def resolve_checkpoint(session: Session, *, team_id: str, ref: str) -> str:
    """A checkpoint id of the team (or a tinker:// path, returned as given) → its tinker:// path."""
    if ref.startswith("tinker://"):
        return ref
    uri = session.scalar(select(Checkpoint.uri).join(Job, Job.id == Checkpoint.job_id)
                         .where(Checkpoint.id == ref, Job.team_id == team_id))
    if uri is None:
        raise NotFound(f"No checkpoint {ref} in your team.")
    return uri


def list_checkpoints(session: Session, *, team_id: str, job_id: str) -> list[dict[str, Any]]:
    _owned(session, team_id, job_id)
    rows = session.execute(select(*CHECKPOINT_COLUMNS).where(Checkpoint.job_id == job_id)
                           .order_by(Checkpoint.step, Checkpoint.created_at)).all()
    return [row_dict(r, "created_at") for r in rows]


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
                  after_step: int) -> dict[str, list[list[float]]]:
    _owned(session, team_id, job_id)
    query = select(Metric.name, Metric.step, Metric.value).where(Metric.job_id == job_id, Metric.step > after_step)
    if names:
        query = query.where(Metric.name.in_(names))
    series: dict[str, list[list[float]]] = {}
    for name, step, value in session.execute(query.order_by(Metric.name, Metric.step)):
        series.setdefault(name, []).append([step, value])
    return series
