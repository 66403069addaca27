"""Dependencies between jobs: record them, and settle pending jobs when what they wait for ended — queue the
ready ones (filling in their output references), cancel the others naming the step where it started
(docs/architecture.md, "Multi-step pipelines")."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import exists, insert, select, update
from sqlalchemy.orm import Session

from app.models import Job, JobDependency, utcnow
from app.services import refs
from app.services.transitions import DB, NOW, Wakeup, change, error_body


def add_dependencies(db: DB, job_id: str, depends_on: Iterable[str]) -> None:
    rows = [{"job_id": job_id, "depends_on_id": d} for d in sorted(set(depends_on))]
    if rows:
        conn = db.connection() if isinstance(db, Session) else db
        conn.execute(insert(JobDependency), rows)
        conn.execute(update(Job).where(Job.id.in_([r["depends_on_id"] for r in rows])).values(has_dependents=True))


_UNFINISHED = ("pending", "queued", "running")


def _settle(db: DB, pending_ids: list[str]) -> list[Wakeup]:
    """Queue each of these pending jobs whose dependencies all succeeded (filling in its output references);
    cancel those with one that did not, naming the step or job at the root of it, and settle their own
    dependents in turn, so a failed first step cancels a whole pipeline at once."""
    released: list[Wakeup] = []
    while pending_ids:
        cancelled: list[str] = []
        released.extend(_settle_once(db, pending_ids, cancelled))
        pending_ids = _waiting_on(db, cancelled) if cancelled else []
    return released


def _settle_once(db: DB, pending_ids: list[str], cancelled: list[str]) -> list[Wakeup]:
    now = utcnow()
    deps: dict[str, list[Any]] = {j: [] for j in pending_ids}
    rows = db.execute(
        select(JobDependency.job_id, JobDependency.depends_on_id, Job.status, Job.pipeline_step, Job.error)
        .join(Job, Job.id == JobDependency.depends_on_id, isouter=True)
        .where(JobDependency.job_id.in_(pending_ids))
    ).all()
    for row in rows:
        deps[row.job_id].append(row)
    jobs = {r.id: r for r in db.execute(select(Job.id, Job.kind, Job.has_refs, Job.spec)
                                        .where(Job.id.in_(pending_ids))).all()}
    released: list[Wakeup] = []
    for job_id, parents in deps.items():
        if any(p.status in _UNFINISHED for p in parents):
            continue
        broken = sorted((p for p in parents if p.status != "succeeded"), key=lambda p: p.depends_on_id)
        if broken:
            error = _dependency_error(broken[0])
            if change(db, job_id, "pending", {"status": "cancelled", "finished_at": now, "error": error},
                       [("cancelled", {"reason": error["message"], **error["details"]})], now) is not None:
                cancelled.append(job_id)
            continue
        job = jobs[job_id]
        values: dict[str, Any] = {"status": "queued", "enqueued_at": NOW}
        if job.has_refs:
            spec, why = refs.resolve(db, job.spec)
            if why:
                error = error_body("missing_input", why, user_error=True)
                if change(db, job_id, "pending", {"status": "failed", "finished_at": now, "error": error},
                           [("failed", {"error": error})], now) is not None:
                    cancelled.append(job_id)
                continue
            values.update(spec=spec, has_refs=False)
        if change(db, job_id, "pending", values, [("queued", {})], now) is not None:
            released.append((job_id, job.kind, False))
    return released


def _dependency_error(parent: Any) -> dict[str, Any]:
    """Why a job is cancelled when `parent` did not succeed: names the step (or job) where it started."""
    details = ((parent.error or {}).get("details") or {}) if parent.status == "cancelled" else {}
    if details.get("root_job"):  # the parent was itself cancelled by a dependency: keep pointing at the root
        root = {k: details[k] for k in ("root_job", "root_step", "root_status") if k in details}
    else:
        root = {"root_job": parent.depends_on_id, "root_step": parent.pipeline_step,
                "root_status": parent.status or "gone"}
    name = f"step '{root['root_step']}'" if root.get("root_step") else f"job {root['root_job']}"
    message = f"{name} {root['root_status']}" if root["root_status"] != "gone" else f"{name} no longer exists"
    if root["root_job"] != parent.depends_on_id:
        via = f"step '{parent.pipeline_step}'" if parent.pipeline_step else f"job {parent.depends_on_id}"
        message += f" (so {via} was cancelled)"
    return error_body("dependency_failed", f"Cancelled because {message}; this job needed its output.",
                      user_error=True, details={"dependency": parent.depends_on_id, **root})


def _waiting_on(db: DB, job_ids: list[str]) -> list[str]:
    return list(db.execute(
        select(JobDependency.job_id).join(Job, Job.id == JobDependency.job_id)
        .where(JobDependency.depends_on_id.in_(job_ids), Job.status == "pending")
    ).scalars().all())


def release_dependents(db: DB, job_id: str) -> list[Wakeup]:
    """After `job_id` ended: settle the pending jobs that wait on it (found through the index)."""
    return _settle(db, _waiting_on(db, [job_id]))


def release_pending(db: DB, *, limit: int = 500) -> list[Wakeup]:
    """The reaper's sweep: pending jobs none of whose dependencies is unfinished. Jobs still waiting are
    excluded by the query itself, so a ready job is never starved behind many waiting ones."""
    dep = JobDependency.__table__.alias("dep")
    parent = Job.__table__.alias("parent")
    blocked = exists(select(dep.c.job_id).join(parent, parent.c.id == dep.c.depends_on_id)
                     .where(dep.c.job_id == Job.id, parent.c.status.in_(_UNFINISHED)))
    ready = db.execute(select(Job.id).where(Job.status == "pending", ~blocked).order_by(Job.id).limit(limit))
    return _settle(db, list(ready.scalars().all()))
