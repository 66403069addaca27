"""Pipelines: submit named steps as jobs in one transaction, read them back, cancel them
(docs/architecture.md, "Multi-step pipelines").

A step is an ordinary job (`job.pipeline_id`, `job.pipeline_step`) whose `depends_on` holds the jobs of the steps
it names; `{"$ref": "STEP.OUTPUT"}` in its spec becomes `{"$ref": "JOB_ID.OUTPUT"}` and is filled in at release
(app/services/refs.py). Everything after submit — release, cascade on failure, retries — is the jobs' own
lifecycle, so a pipeline has no state of its own beyond its list of steps.
"""

from __future__ import annotations

import hashlib
from graphlib import CycleError, TopologicalSorter
from typing import Any

import orjson
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.errors import Conflict, InvalidRequest, NotFound, TuneqError
from app.models import Job, JobEvent, Pipeline, new_id, utcnow
from app.models.pipeline import pipeline_status
from app.queue import enqueue
from app.schemas.common import JOB_CURSOR
from app.schemas.pipelines import PipelineCreate
from app.services import dependencies, estimates, job_checks, quotas, refs, transitions, webhooks
from app.services import jobs as jobs_service
from app.services.auth import Caller
from app.settings import Settings

_UNFINISHED = ("pending", "queued", "running")


def _step_error(name: str, exc: TuneqError) -> InvalidRequest:
    """A job check's error, re-addressed to the step it came from (`steps.NAME.spec…`)."""
    errors = []
    for error in exc.errors:
        loc = list(error.get("loc", []))
        errors.append({**error, "loc": ["body", "steps", name, *loc[1:]] if loc[:1] == ["body"] else loc})
    return InvalidRequest(f"steps.{name}.{exc.detail}" if exc.detail.startswith(("spec", "depends_on"))
                          else f"steps.{name}: {exc.detail}", errors=errors)


def _graph(session: Session, team_id: str, body: PipelineCreate) -> tuple[dict[str, set[str]], list[str]]:
    """(each step's steps to wait for, the steps in an order that respects them); 422 on a bad reference,
    an unknown name or a cycle. References and depends_on entries that are not steps name jobs of the team."""
    outside = {d for step in body.steps.values() for d in step.depends_on if d not in body.steps}
    outside |= {r.source for step in body.steps.values() for r in refs.find(step.spec.model_dump(mode="json"))
                if r.source not in body.steps}
    kinds = dict(session.execute(select(Job.id, Job.kind).where(Job.team_id == team_id, Job.id.in_(outside)))
                 .tuples().all()) if outside else {}
    waits: dict[str, set[str]] = {}
    for name, step in body.steps.items():
        waits[name] = {d for d in step.depends_on if d in body.steps}
        for i, dep in enumerate(step.depends_on):
            if dep not in body.steps and dep not in kinds:
                raise InvalidRequest(f"steps.{name}.depends_on[{i}]: '{dep}' is neither a step of this pipeline "
                                     f"({', '.join(body.steps)}) nor a job of your team.",
                                     errors=[{"loc": ["body", "steps", name, "depends_on", i], "msg": "unknown"}])
        for ref in refs.find(step.spec.model_dump(mode="json")):
            if ref.source == name:
                raise InvalidRequest(f"steps.{name}.{ref.field}: a step cannot take its own output.",
                                     errors=[{"loc": ["body", "steps", name, *ref.path], "msg": "self reference"}])
            is_step = ref.source in body.steps
            kind = body.steps[ref.source].kind if is_step else kinds.get(ref.source)
            why = refs.problem(ref, kind, what="step or job")
            if why:
                raise InvalidRequest(f"steps.{name}.{why}",
                                     errors=[{"loc": ["body", "steps", name, "spec", *ref.path], "msg": why}])
            if is_step:
                waits[name].add(ref.source)
    try:
        order = list(TopologicalSorter(waits).static_order())
    except CycleError as exc:
        cycle = " → ".join(exc.args[1])
        raise InvalidRequest(f"steps: they wait on each other in a cycle ({cycle}); a step can only use the "
                             "output of a step that does not need its own.",
                             errors=[{"loc": ["body", "steps"], "msg": f"cycle: {cycle}"}]) from None
    return waits, order


def _sum(values: list[Any]) -> float | None:
    known = [v for v in values if isinstance(v, int | float)]
    return round(sum(known), 6) if known else None


def submit(session: Session, *, caller: Caller, body: PipelineCreate, idempotency_key: str | None,
           settings: Settings, dry_run: bool = False) -> tuple[dict[str, Any], bool]:
    """Check every step as a job submit would, then create the pipeline and all its jobs in one transaction;
    commit, then wake the steps that wait for nothing. Returns (pipeline, replayed)."""
    waits, order = _graph(session, caller.team_id, body)
    webhooks.check_url(body.webhook_url, settings, ["body", "webhook_url"])  # DNS only when a URL is given
    specs: dict[str, dict[str, Any]] = {}
    step_estimates: dict[str, Any] = {}
    for name in order:
        step = body.steps[name]
        try:
            if step.kind == "test" and not settings.enable_test_jobs:
                raise InvalidRequest("kind: 'test' is disabled on this server (TUNEQ_ENABLE_TEST_JOBS).",
                                     errors=[{"loc": ["body", "kind"], "msg": "disabled"}])
            job_checks.check_spec(session, caller, step.kind, step, settings)
            specs[name] = step.spec.model_dump(mode="json")
            step_estimates[name] = estimates.estimate(session, caller, step.kind, step.spec, settings,
                                                     dry_run=dry_run)
        except TuneqError as exc:
            raise _step_error(name, exc) from None
    estimate = {"cost_usd": _sum([(e or {}).get("cost_usd") for e in step_estimates.values()]),
                "duration_seconds": _sum([(e or {}).get("duration_seconds") for e in step_estimates.values()]),
                "note": "the sum over the steps that have an estimate; steps run in order where they depend on "
                        "each other"}
    if dry_run:
        session.rollback()
        return {"dry_run": True, "estimate": estimate,
                "steps": {name: {"kind": body.steps[name].kind, "depends_on": sorted(waits[name]),
                                 "estimate": step_estimates[name]} for name in order}}, False

    idempotency_key = idempotency_key or None  # an empty header is no key
    body_hash = hashlib.sha256(orjson.dumps(body.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)).hexdigest()
    if idempotency_key:
        replay = _replay(session, caller.team_id, idempotency_key, body_hash)
        if replay is not None:
            return replay, True
    try:
        pipeline_id = new_id("pl")
        job_ids = {name: new_id("job") for name in order}
        now = utcnow()
        session.execute(insert(Pipeline), {
            "id": pipeline_id, "team_id": caller.team_id, "name": body.name, "labels": body.labels,
            "steps": [{"name": name, "job_id": job_ids[name]} for name in body.steps],
            "webhook_url": body.webhook_url, "estimate": estimate, "idempotency_key": idempotency_key,
            "request_hash": body_hash, "created_at": now})
        ready_jobs: list[tuple[str, str]] = []
        for name in order:
            step, spec = body.steps[name], specs[name]
            refs.retarget(spec, job_ids)
            if step.kind == "generation":
                spec = quotas.budget_generation(session, caller.team_id, spec, settings)
            depends_on = [job_ids.get(d, d) for d in step.depends_on]
            depends_on += sorted({r.source for r in refs.find(spec)} - set(depends_on))
            depends_on += sorted({job_ids[w] for w in waits[name]} - set(depends_on))
            ready = not waits[name] and jobs_service.dependencies_met(session, caller.team_id, depends_on)
            has_refs = any(True for _ in refs.find(spec))
            if ready and has_refs:  # only finished jobs outside the pipeline are referenced
                spec, why = refs.resolve(session, spec)
                if why:
                    raise InvalidRequest(f"steps.{name}.{why}", errors=[{"loc": ["body", "steps", name], "msg": why}])
                has_refs = False
            labels = {**body.labels, **step.labels}
            _, values = jobs_service.job_values(
                job_ids[name], caller.team_id, step.kind, step.model_copy(update={"labels": labels}), spec, settings,
                depends_on=depends_on, ready=ready, estimate=step_estimates[name], has_refs=has_refs,
                pipeline_id=pipeline_id, step=name)
            session.execute(insert(Job), values)
            session.execute(insert(JobEvent), {"job_id": job_ids[name], "seq": 1, "type": values["status"],
                                               "attempt": 0, "data": {"pipeline_id": pipeline_id, "step": name},
                                               "created_at": now})
            dependencies.add_dependencies(session, job_ids[name], depends_on)
            if ready:
                ready_jobs.append((job_ids[name], step.kind))
        session.commit()
    except IntegrityError:  # a concurrent request with the same Idempotency-Key won
        session.rollback()
        replay = _replay(session, caller.team_id, idempotency_key or "", body_hash) if idempotency_key else None
        if replay is None:
            raise Conflict("A request with this Idempotency-Key is in progress; retry shortly.") from None
        return replay, True
    for job_id, kind in ready_jobs:
        enqueue(job_id, kind)
    return get(session, team_id=caller.team_id, pipeline_id=pipeline_id), False


def _replay(session: Session, team_id: str, key: str, body_hash: str) -> dict[str, Any] | None:
    row = session.execute(select(Pipeline.id, Pipeline.request_hash)
                          .where(Pipeline.team_id == team_id, Pipeline.idempotency_key == key)).first()
    if row is None:
        return None
    if row.request_hash != body_hash:
        raise InvalidRequest(f"Idempotency-Key '{key}' was already used with a different request body; use a new "
                             "key for a new pipeline.",
                             errors=[{"loc": ["header", "Idempotency-Key"], "msg": "reused with a different body"}])
    return get(session, team_id=team_id, pipeline_id=row.id)


_STEP_COLUMNS = (Job.id, Job.kind, Job.status, Job.depends_on, Job.progress, Job.result, Job.error)


def _read(session: Session, pipelines: list[Any]) -> list[dict[str, Any]]:
    ids = [p.id for p in pipelines]
    jobs = {r.id: r for r in session.execute(select(*_STEP_COLUMNS).where(Job.pipeline_id.in_(ids))).all()} \
        if ids else {}
    out = []
    for p in pipelines:
        names = {s["job_id"]: s["name"] for s in p.steps}
        steps = []
        for s in p.steps:
            job = jobs.get(s["job_id"])
            if job is None:  # deleted with its team's data; nothing to show
                continue
            steps.append({"name": s["name"], "job_id": job.id, "kind": job.kind, "status": job.status,
                          "depends_on": [names.get(d, d) for d in job.depends_on], "progress": job.progress,
                          "result": job.result, "error": job.error})
        out.append({"id": p.id, "name": p.name, "labels": p.labels,
                    "status": pipeline_status([s["status"] for s in steps]), "steps": steps, "estimate": p.estimate,
                    "webhook_url": p.webhook_url, "created_at": p.created_at.isoformat()})
    return out


_COLUMNS = (Pipeline.id, Pipeline.name, Pipeline.labels, Pipeline.steps, Pipeline.estimate, Pipeline.webhook_url,
            Pipeline.created_at)


def get(session: Session, *, team_id: str, pipeline_id: str) -> dict[str, Any]:
    row = session.execute(select(*_COLUMNS).where(Pipeline.id == pipeline_id, Pipeline.team_id == team_id)).first()
    if row is None:
        raise NotFound(f"No pipeline {pipeline_id} in your team.")
    return _read(session, [row])[0]


def list_pipelines(session: Session, *, team_id: str, limit: int = 50,
                   cursor: str | None = None) -> tuple[list[dict[str, Any]], bool, str | None]:
    """Newest first; the cursor is the last id seen (ids are time-ordered)."""
    query = select(*_COLUMNS).where(Pipeline.team_id == team_id)
    if cursor:
        if not cursor.startswith("pl_") or not JOB_CURSOR.fullmatch(cursor):
            raise InvalidRequest("cursor: not a cursor this API returned; pass next_cursor from the previous page.",
                                 errors=[{"loc": ["query", "cursor"], "msg": "invalid cursor"}])
        query = query.where(Pipeline.id < cursor)
    rows = session.execute(query.order_by(Pipeline.id.desc()).limit(limit + 1)).all()
    data = _read(session, list(rows[:limit]))
    has_more = len(rows) > limit
    return data, has_more, (data[-1]["id"] if has_more else None)


def cancel(session: Session, *, team_id: str, pipeline_id: str) -> dict[str, Any]:
    """Cancel every step that has not finished (a running one stops at its next step); finished steps keep
    their outputs. Cancelling a finished pipeline changes nothing."""
    pipeline = get(session, team_id=team_id, pipeline_id=pipeline_id)
    for step in reversed(pipeline["steps"]):  # dependents first, so none is released in between
        if step["status"] in _UNFINISHED:
            transitions.request_cancel(session, step["job_id"])
    session.commit()
    return get(session, team_id=team_id, pipeline_id=pipeline_id)
