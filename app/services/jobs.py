"""Job rules and queries: submit (with idempotency), read, list, cancel, resume, events."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, bindparam, insert, literal, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import run_statement
from app.errors import Conflict, InvalidRequest, NotFound
from app.models import TERMINAL_STATUSES, Job, JobEvent, new_id, row_dict, utcnow
from app.queue import enqueue
from app.schemas.jobs import JobCreateBase
from app.services import dependencies, estimates, job_checks, quotas, refs, transitions
from app.services.auth import Caller
from app.settings import Settings

JOB_COLUMNS = (
    Job.id, Job.kind, Job.status, Job.spec, Job.labels, Job.depends_on, Job.progress, Job.result, Job.error,
    Job.attempt, Job.max_attempts, Job.preemptions, Job.created_at, Job.started_at, Job.finished_at, Job.cancel_requested_at,
    Job.pipeline_id, Job.pipeline_step, Job.estimate, Job.webhook_url,
)
_TIMES = ("created_at", "started_at", "finished_at", "cancel_requested_at")
_INSERT_JOB = insert(Job)
_INSERT_EVENT = insert(JobEvent)


def _insert_job_and_event() -> Any:
    """PostgreSQL: the job and its first event in one statement (one round trip instead of two)."""
    job_columns = [c for c in Job.__table__.c]
    created = (insert(Job).values({c.name: bindparam(c.name, type_=c.type) for c in job_columns})
               .returning(Job.id, Job.status, Job.created_at).cte("created"))
    events = JobEvent.__table__.c
    return insert(JobEvent).from_select(
        ["job_id", "seq", "type", "data", "attempt", "created_at"],
        select(created.c.id, literal(1), created.c.status, bindparam("e_data", type_=events.data.type), literal(0),
               created.c.created_at),
    )


_INSERT_JOB_AND_EVENT = _insert_job_and_event()
EVENT_COLUMNS = (JobEvent.seq, JobEvent.type, JobEvent.attempt, JobEvent.data, JobEvent.created_at)


def job_to_dict(row: Any) -> dict[str, Any]:
    return row_dict(row, *_TIMES)


def request_hash(body: JobCreateBase) -> str:
    return hashlib.sha256(orjson.dumps(body.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)).hexdigest()


def _replay(session: Session, team_id: str, key: str, body_hash: str) -> dict[str, Any] | None:
    row = session.execute(
        select(Job.id, Job.request_hash).where(Job.team_id == team_id, Job.idempotency_key == key)
    ).first()
    if row is None:
        return None
    if row.request_hash != body_hash:
        raise InvalidRequest(
            f"Idempotency-Key '{key}' was already used with a different request body; "
            "use a new key for a new job.",
            errors=[{"loc": ["header", "Idempotency-Key"], "msg": "reused with a different body"}],
        )
    return get(session, team_id=team_id, job_id=row.id)


def dependencies_met(session: Session, team_id: str, depends_on: list[str]) -> bool:
    """True when every dependency already succeeded; 422 when one is unknown or failed."""
    if not depends_on:
        return True
    found = dict(
        session.execute(select(Job.id, Job.status).where(Job.team_id == team_id, Job.id.in_(depends_on)))
        .tuples()
        .all()
    )
    for i, dep in enumerate(depends_on):
        status = found.get(dep)
        if status is None:
            raise InvalidRequest(f"depends_on[{i}]: no job {dep} in your team.",
                                 errors=[{"loc": ["body", "depends_on", i], "msg": "unknown job"}])
        if status in ("failed", "cancelled"):
            raise InvalidRequest(f"depends_on[{i}]: job {dep} is {status}, so this job could never start.",
                                 errors=[{"loc": ["body", "depends_on", i], "msg": f"job is {status}"}])
    return all(found[d] == "succeeded" for d in depends_on)


def job_values(job_id: str, team_id: str, kind: str, body: JobCreateBase, spec: dict[str, Any], settings: Settings,
               *, depends_on: list[str], ready: bool, estimate: dict[str, Any] | None, has_refs: bool = False,
               idempotency_key: str | None = None, request_hash: str | None = None, pipeline_id: str | None = None,
               step: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the job as the API shows it, every column of its row) for a new job."""
    now = utcnow()
    row = {
        "id": job_id, "kind": kind, "status": "queued" if ready else "pending", "spec": spec, "labels": body.labels,
        "depends_on": depends_on, "progress": None, "result": None, "error": None, "attempt": 0,
        "max_attempts": body.max_attempts or settings.max_attempts, "preemptions": 0, "created_at": now,
        "started_at": None, "finished_at": None, "cancel_requested_at": None, "pipeline_id": pipeline_id,
        "pipeline_step": step, "estimate": estimate, "webhook_url": body.webhook_url,
    }
    # Core inserts of constant statements (SQLAlchemy's compiled cache): this is the hot write path.
    values = {
        **row, "team_id": team_id, "lease_token": 0, "event_seq": 1, "idempotency_key": idempotency_key,
        "request_hash": request_hash, "updated_at": now, "enqueued_at": now if ready else None,
        "has_dependents": False, "lease_owner": None, "heartbeat_at": None, "preempted": False,
        "stall_seconds": body.stall_seconds, "progress_at": None, "not_before": None, "has_refs": has_refs,
    }
    return row, values


def _check_references(session: Session, team_id: str, references: list[refs.Reference],
                      depends_on: list[str]) -> list[str]:
    """A plain job's references name jobs of the team by id; each must have that output. Returns depends_on
    with every referenced job added (a job waits for what it reads)."""
    if not references:
        return depends_on
    kinds = dict(session.execute(select(Job.id, Job.kind).where(
        Job.team_id == team_id, Job.id.in_({r.source for r in references}))).tuples().all())
    for ref in references:
        why = refs.problem(ref, kinds.get(ref.source), what="job in your team")
        if why:
            raise InvalidRequest(why, errors=[{"loc": ["body", "spec", *ref.path], "msg": "bad reference"}])
    return [*depends_on, *sorted({r.source for r in references} - set(depends_on))]


def submit(
    session: Session,
    *,
    caller: Caller,
    body: JobCreateBase,
    spec: dict[str, Any],
    kind: str,
    idempotency_key: str | None,
    settings: Settings,
    dry_run: bool = False,
) -> tuple[dict[str, Any], bool]:
    """Create a job, commit, then send its wake-up. Returns (job, replayed). A dry run checks everything,
    creates nothing and returns the estimate."""
    if kind == "test" and not settings.enable_test_jobs:
        raise InvalidRequest("Job kind 'test' is disabled on this server (TUNEQ_ENABLE_TEST_JOBS).",
                             errors=[{"loc": ["body", "kind"], "msg": "disabled"}])
    job_checks.check_spec(session, caller, kind, body, settings)
    references = list(refs.find(spec))
    depends_on = _check_references(session, caller.team_id, references, body.depends_on)
    spec_model = getattr(body, "spec", None)
    estimate = (estimates.estimate(session, caller, kind, spec_model, settings, dry_run=dry_run)
                if spec_model is not None else None)
    if dry_run:
        session.rollback()
        return {"dry_run": True, "kind": kind, "spec": spec, "depends_on": depends_on, "estimate": estimate}, False
    idempotency_key = idempotency_key or None  # an empty header is no key
    body_hash = request_hash(body)
    if idempotency_key:
        replay = _replay(session, caller.team_id, idempotency_key, body_hash)
        if replay is not None:
            return replay, True
    if kind == "generation":
        spec = quotas.budget_generation(session, caller.team_id, spec, settings)

    ready = dependencies_met(session, caller.team_id, depends_on)
    if ready and references:  # every referenced job already succeeded: fill the references in now
        spec, why = refs.resolve(session, spec)
        if why:
            raise InvalidRequest(why, errors=[{"loc": ["body", "spec", *references[0].path], "msg": "output missing"}])
    job_id = new_id("job")
    row, values = job_values(job_id, caller.team_id, kind, body, spec, settings, depends_on=depends_on,
                             ready=ready, estimate=estimate, has_refs=bool(references) and not ready,
                             idempotency_key=idempotency_key, request_hash=body_hash)
    now, status = values["created_at"], values["status"]

    def insert(conn: Connection) -> None:
        if conn.dialect.name == "postgresql":  # the job and its first event in one statement
            conn.execute(_INSERT_JOB_AND_EVENT, {**values, "e_data": {}})
        else:
            conn.execute(_INSERT_JOB, values)
            conn.execute(_INSERT_EVENT, {"job_id": job_id, "seq": 1, "type": status, "attempt": 0, "data": {},
                                         "created_at": now})

    try:
        if session.get_bind().dialect.name == "postgresql" and not depends_on:
            # One statement: it can skip BEGIN/COMMIT and the pre-ping. A retry on a fresh connection is safe:
            # if the first try did land, the retry hits its primary key, which counts as done (below).
            run_statement(insert)
        else:
            insert(session.connection())
            dependencies.add_dependencies(session, job_id, depends_on)
            session.commit()
    except IntegrityError:
        session.rollback()
        if session.execute(select(Job.id).where(Job.id == job_id)).first() is not None:
            if ready:  # our own insert landed before its connection dropped
                enqueue(job_id, kind)
            return {**row, "created_at": now.isoformat()}, False
        # A concurrent request with the same Idempotency-Key won the insert.
        replay = _replay(session, caller.team_id, idempotency_key or "", body_hash) if idempotency_key else None
        if replay is None:
            raise Conflict("A request with this Idempotency-Key is in progress; retry shortly.") from None
        return replay, True
    if ready:
        enqueue(job_id, kind)
    return {**row, "created_at": now.isoformat()}, False


def get(session: Session, *, team_id: str, job_id: str) -> dict[str, Any]:
    row = session.execute(select(*JOB_COLUMNS).where(Job.id == job_id, Job.team_id == team_id)).first()
    if row is None:
        raise NotFound(f"No job {job_id} in your team.")
    return job_to_dict(row)


def list_jobs(
    session: Session,
    *,
    team_id: str,
    kind: str | None = None,
    status: str | None = None,
    created_after: datetime | None = None,
    label: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[dict[str, Any]], bool, str | None]:
    """Newest first. Ids are time-ordered, so the cursor is the last id seen. Every filter is checked here, so
    a bad one is a 422 naming it (never a database error): `created_after` is clamped to the years jobs can
    have, a label may not hold control characters (PostgreSQL cannot store NUL), a cursor must be a job id."""
    from app.schemas.common import JOB_CURSOR, clamp_utc, control_characters
    from app.settings import JOB_KINDS

    query = select(*JOB_COLUMNS).where(Job.team_id == team_id)
    if kind:
        if kind not in (*JOB_KINDS, "test"):
            raise InvalidRequest(f"kind: '{kind[:50]}' is not a job kind; use one of {', '.join(JOB_KINDS)}.",
                                 errors=[{"loc": ["query", "kind"], "msg": "unknown kind"}])
        query = query.where(Job.kind == kind)
    if status:
        query = query.where(Job.status == status)
    if created_after:
        query = query.where(Job.created_at > clamp_utc(created_after))
    if label:
        name, sep, value = label.partition(":")
        if not sep or not name or not value or len(name) > 200 or len(value) > 200 or control_characters(label):
            raise InvalidRequest("label: must look like 'name:value', each part 1–200 characters without control "
                                 "characters.", errors=[{"loc": ["query", "label"], "msg": "expected name:value"}])
        query = query.where(Job.labels[name].as_string() == value)
    if cursor:
        if not JOB_CURSOR.fullmatch(cursor):
            raise InvalidRequest("cursor: not a cursor this API returned; pass next_cursor from the previous page.",
                                 errors=[{"loc": ["query", "cursor"], "msg": "invalid cursor"}])
        query = query.where(Job.id < cursor)
    rows = session.execute(query.order_by(Job.id.desc()).limit(limit + 1)).all()
    has_more = len(rows) > limit
    data = [job_to_dict(r) for r in rows[:limit]]
    return data, has_more, (data[-1]["id"] if has_more else None)


def cancel(session: Session, *, team_id: str, job_id: str) -> dict[str, Any]:
    """Cancel the job, or ask its worker to stop. Cancelling a cancelled job (or one whose cancel was already
    requested) changes nothing and answers the job as it is."""
    job = get(session, team_id=team_id, job_id=job_id)
    if job["status"] in ("succeeded", "failed"):
        raise Conflict(f"Job {job_id} already {job['status']}; there is nothing to cancel.")
    transitions.request_cancel(session, job_id)
    session.commit()
    return get(session, team_id=team_id, job_id=job_id)


RESUMABLE = ("failed", "cancelled")


def resume(session: Session, *, team_id: str, job_id: str) -> dict[str, Any]:
    """Queue a failed or cancelled job again as the same run, with a fresh attempt budget; commit, then send
    its wake-up. Its pipeline continues from what it saved (training: its last checkpoint)."""
    job = get(session, team_id=team_id, job_id=job_id)
    _check_resumable(session, team_id, job)
    row = transitions.resume(session, job_id, job["status"])
    if row is None:  # someone else resumed it between our read and our update
        session.rollback()
        _check_resumable(session, team_id, get(session, team_id=team_id, job_id=job_id))
        raise Conflict(f"Job {job_id} changed while it was being resumed; read it again and retry if needed.")
    session.commit()
    enqueue(job_id, row.kind, resumed=True)
    return get(session, team_id=team_id, job_id=job_id)


def _check_resumable(session: Session, team_id: str, job: dict[str, Any]) -> None:
    job_id, status = job["id"], job["status"]
    if status not in RESUMABLE:
        why = {"succeeded": "it already succeeded", "pending": "it is waiting for its dependencies",
               "queued": "it is queued to run", "running": "it is running"}.get(status, f"it is {status}")
        raise Conflict(f"Job {job_id} cannot be resumed: {why}; only failed or cancelled jobs can be resumed.")
    if job["depends_on"]:
        found = dict(session.execute(select(Job.id, Job.status).where(
            Job.team_id == team_id, Job.id.in_(job["depends_on"]))).tuples().all())
        unmet = [d for d in job["depends_on"] if found.get(d) != "succeeded"]
        if unmet:
            raise Conflict(f"Job {job_id} cannot be resumed: its dependency {unmet[0]} is "
                           f"{found.get(unmet[0], 'gone')}, so it would run without its input. Resume "
                           f"{unmet[0]} first, then this job once it has succeeded.")


def list_events(
    session: Session, *, team_id: str, job_id: str, after: int = 0, limit: int = 100
) -> tuple[list[dict[str, Any]], bool]:
    if session.execute(select(Job.id).where(Job.id == job_id, Job.team_id == team_id)).first() is None:
        raise NotFound(f"No job {job_id} in your team.")
    rows = session.execute(
        select(*EVENT_COLUMNS).where(JobEvent.job_id == job_id, JobEvent.seq > after)
        .order_by(JobEvent.seq).limit(limit + 1)
    ).all()
    return [row_dict(r, "created_at") for r in rows[:limit]], len(rows) > limit


def is_terminal(job: dict[str, Any]) -> bool:
    return job["status"] in TERMINAL_STATUSES
