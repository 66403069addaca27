"""Every job status change, as compare-and-set UPDATEs (DESIGN.md §2–3).

Each change bumps `job.event_seq` in the same UPDATE that checks the expected state, then appends
its events with those sequence numbers, all in the caller's transaction; on PostgreSQL a change with one
event is a single statement, which app.db.run_statement runs in autocommit. A write made by a worker also
matches its `lease_token`: zero rows means the lease moved on, and the worker must stop.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, Update, and_, bindparam, insert, or_, select, update
from sqlalchemy.orm import Session

from app.models import Job, JobEvent, utcnow

Event = tuple[str, dict[str, Any]]
DB = Session | Connection  # a session, or a bare connection from app.db.run_statement


class LeaseLost(Exception):
    """This worker no longer owns the job; it must stop without writing anything else."""


@dataclass(frozen=True)
class Claim:
    job_id: str
    team_id: str
    kind: str
    spec: dict[str, Any]
    token: int
    attempt: int
    max_attempts: int


def error_body(code: str, message: str, *, user_error: bool, details: dict[str, Any] | None = None) -> dict:
    return {"code": code, "message": message, "user_error": user_error, "details": details or {}}


class Increment:
    """A value meaning "this column + 1"."""


INCREMENT = Increment()

# Guards name the expected state of a compare-and-set; their parameters are bound at execution time.
_GUARDS: dict[str, Callable[[], list[ColumnElement[bool]]]] = {
    "claimable": lambda: [
        Job.attempt < Job.max_attempts,
        or_(Job.status == "queued", and_(Job.status == "running", Job.heartbeat_at < bindparam("g_cutoff"))),
    ],
    "leased": lambda: [Job.lease_token == bindparam("g_token"), Job.status == "running"],
    "waiting": lambda: [Job.status.in_(("pending", "queued"))],
    "running_not_cancelling": lambda: [Job.status == "running", Job.cancel_requested_at.is_(None)],
    "queued_never_sent": lambda: [Job.status == "queued", Job.enqueued_at.is_(None)],
    "queued_sent_at": lambda: [Job.status == "queued", Job.enqueued_at == bindparam("g_enqueued_at")],
    "pending": lambda: [Job.status == "pending"],
}
_RETURNING = (Job.id, Job.event_seq, Job.attempt, Job.max_attempts, Job.team_id, Job.kind, Job.spec, Job.lease_token,
              Job.cancel_requested_at, Job.has_dependents)
_INSERT_EVENTS = insert(JobEvent)


@functools.lru_cache(maxsize=256)
def _statement(guard: str, keys: tuple[str, ...], increments: tuple[str, ...]) -> Update:
    """One UPDATE per (guard, columns) shape, built once: SQLAlchemy's hot path is then just execution."""
    columns = Job.__table__.c
    values: dict[str, Any] = {k: bindparam(f"v_{k}", type_=columns[k].type) for k in keys}
    values.update({k: columns[k] + 1 for k in increments})
    values["event_seq"] = Job.event_seq + bindparam("n_events")
    return (update(Job).where(Job.id == bindparam("g_job_id"), *_GUARDS[guard]()).values(**values)
            .returning(*_RETURNING))


@functools.lru_cache(maxsize=256)
def _statement_logged(guard: str, keys: tuple[str, ...], increments: tuple[str, ...]) -> Select[Any]:
    """PostgreSQL: the UPDATE and its one event INSERT in a single statement (one round trip, not two)."""
    changed = _statement(guard, keys, increments).cte("changed")
    events = JobEvent.__table__.c
    logged = insert(JobEvent).from_select(
        ["job_id", "seq", "type", "data", "attempt", "created_at"],
        select(changed.c.id, changed.c.event_seq, bindparam("e_type", type_=events.type.type),
               bindparam("e_data", type_=events.data.type), changed.c.attempt,
               bindparam("e_created_at", type_=events.created_at.type)),
    ).cte("logged")
    return select(changed).add_cte(logged)


def _change(
    db: DB,
    job_id: str,
    guard: str,
    values: dict[str, Any],
    events: list[Event],
    now: datetime,
    **guard_params: Any,
) -> Any:
    """Apply `values` if the job is in the `guard` state and append `events`; the updated row or None."""
    values = {**values, "updated_at": now}
    keys = tuple(sorted(k for k, v in values.items() if v is not INCREMENT))
    increments = tuple(sorted(k for k, v in values.items() if v is INCREMENT))
    params = {f"v_{k}": values[k] for k in keys}
    params.update({f"g_{k}": v for k, v in guard_params.items()}, g_job_id=job_id, n_events=len(events))
    conn = db.connection() if isinstance(db, Session) else db  # Core, not ORM-enabled: runs for every job step
    if len(events) == 1 and conn.dialect.name == "postgresql":
        (type_, data), = events
        params.update(e_type=type_, e_data=data, e_created_at=now)
        return conn.execute(_statement_logged(guard, keys, increments), params).first()
    row = conn.execute(_statement(guard, keys, increments), params).first()
    if row is None or not events:
        return row
    first = row.event_seq - len(events) + 1
    conn.execute(
        _INSERT_EVENTS,
        [
            {"job_id": job_id, "seq": first + i, "type": t, "data": d, "attempt": row.attempt, "created_at": now}
            for i, (t, d) in enumerate(events)
        ],
    )
    return row


# ---- worker side -----------------------------------------------------------------------------


def claim(db: DB, job_id: str, *, owner: str, lease_seconds: float) -> Claim | None:
    """Take the job if it is queued, or running under a lease that went stale. None: not ours."""
    now = utcnow()
    cutoff = now - timedelta(seconds=lease_seconds)
    row = _change(
        db,
        job_id,
        "claimable",
        {"status": "running", "lease_owner": owner, "lease_token": INCREMENT, "heartbeat_at": now,
         "attempt": INCREMENT, "started_at": now},
        [("running", {"owner": owner})],
        now,
        cutoff=cutoff,
    )
    if row is None:
        return None
    return Claim(job_id, row.team_id, row.kind, row.spec, row.lease_token, row.attempt, row.max_attempts)


def heartbeat(db: DB, job_id: str, token: int) -> bool:
    """Renew the lease. Returns True when a cancel was requested. Raises LeaseLost."""
    now = utcnow()
    row = _change(db, job_id, "leased", {"heartbeat_at": now}, [], now, token=token)
    if row is None:
        raise LeaseLost(job_id)
    return row.cancel_requested_at is not None


def fenced_update(
    db: DB, job_id: str, token: int, values: dict[str, Any], events: list[Event] | None = None
) -> bool:
    """A worker's write. Returns True when a cancel was requested. Raises LeaseLost."""
    now = utcnow()
    row = _change(db, job_id, "leased", {**values, "heartbeat_at": now}, events or [], now, token=token)
    if row is None:
        raise LeaseLost(job_id)
    return row.cancel_requested_at is not None


def finish(
    db: DB,
    job_id: str,
    token: int,
    status: str,
    *,
    result: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> bool:
    """Record the terminal state once, with its one terminal event. Raises LeaseLost.
    Returns whether other jobs wait on this one (so the caller releases them)."""
    assert status in ("succeeded", "failed", "cancelled")
    now = utcnow()
    values: dict[str, Any] = {"status": status, "finished_at": now, "lease_owner": None}
    if result is not None:
        values["result"] = result
    if error is not None:
        values["error"] = error
    data = {"error": error} if error else {}
    row = _change(db, job_id, "leased", values, [(status, data)], now, token=token)
    if row is None:
        raise LeaseLost(job_id)
    return bool(row.has_dependents)


def retry_later(db: DB, job_id: str, token: int, error: dict[str, Any]) -> bool:
    """Give a transient failure another attempt. False when attempts are used up (job failed)."""
    now = utcnow()
    row = db.execute(select(Job.attempt, Job.max_attempts).where(Job.id == job_id)).first()
    if row is not None and row.attempt >= row.max_attempts:
        finish(db, job_id, token, "failed", error=error)
        return False
    values = {"status": "queued", "lease_owner": None, "enqueued_at": now, "error": error}
    if _change(db, job_id, "leased", values, [("retrying", {"error": error})], now, token=token) is None:
        raise LeaseLost(job_id)
    return True


# ---- API side --------------------------------------------------------------------------------


def request_cancel(db: DB, job_id: str) -> None:
    """Cancel now if no worker runs it; otherwise ask the worker to stop at its next step."""
    now = utcnow()
    done = _change(
        db,
        job_id,
        "waiting",
        {"status": "cancelled", "finished_at": now, "cancel_requested_at": now},
        [("cancelled", {"reason": "cancelled by request"})],
        now,
    )
    if done is None:
        _change(
            db,
            job_id,
            "running_not_cancelling",
            {"cancel_requested_at": now},
            [("cancel_requested", {})],
            now,
        )


def enqueue_marked(db: DB, job_id: str, expected_enqueued_at: datetime | None) -> bool:
    """Note that a wake-up is being sent again; False if someone else just did it."""
    now = utcnow()
    if expected_enqueued_at is None:
        return _change(db, job_id, "queued_never_sent", {"enqueued_at": now}, [], now) is not None
    return _change(db, job_id, "queued_sent_at", {"enqueued_at": now}, [], now,
                   enqueued_at=expected_enqueued_at) is not None


# ---- the reaper ------------------------------------------------------------------------------


def reap(db: DB, *, lease_seconds: float, requeue_after_seconds: float) -> list[tuple[str, str]]:
    """Recover jobs whose worker died and wake-ups that were lost. Returns (job_id, kind) to enqueue."""
    now = utcnow()
    to_enqueue: list[tuple[str, str]] = []
    stale = db.execute(
        select(Job.id, Job.kind, Job.attempt, Job.max_attempts, Job.lease_token, Job.lease_owner,
               Job.cancel_requested_at)
        .where(Job.status == "running", Job.heartbeat_at < now - timedelta(seconds=lease_seconds))
        .limit(500)
    ).all()
    for job in stale:
        token = job.lease_token  # the stale lease this pass takes over (a CAS: one reaper wins)
        lost = {"previous_owner": job.lease_owner, "attempt": job.attempt}
        if job.cancel_requested_at is not None:
            _change(db, job.id, "leased", {"status": "cancelled", "finished_at": now, "lease_owner": None},
                    [("cancelled", {"reason": "cancel requested; its worker stopped responding", **lost})], now,
                    token=token)
        elif job.attempt >= job.max_attempts:
            err = error_body(
                "worker_lost",
                f"The worker running this job stopped sending heartbeats (no sign of life for {lease_seconds:g} s) "
                f"on all {job.attempt} attempts, so it was given up. Check the worker logs for a crash or "
                "out-of-memory kill; resubmit once it is fixed.",
                user_error=False,
            )
            _change(db, job.id, "leased",
                    {"status": "failed", "finished_at": now, "lease_owner": None, "error": err},
                    [("failed", {"error": err})], now, token=token)
        else:
            if _change(db, job.id, "leased", {"status": "queued", "lease_owner": None, "enqueued_at": now},
                       [("requeued", {"reason": "heartbeat timeout", **lost})], now, token=token) is not None:
                to_enqueue.append((job.id, job.kind))

    unclaimed = db.execute(
        select(Job.id, Job.kind, Job.enqueued_at)
        .where(Job.status == "queued",
               (Job.enqueued_at < now - timedelta(seconds=requeue_after_seconds)) | Job.enqueued_at.is_(None))
        .limit(500)
    ).all()
    for waiting in unclaimed:
        if enqueue_marked(db, waiting.id, waiting.enqueued_at):
            to_enqueue.append((waiting.id, waiting.kind))

    to_enqueue.extend(release_pending(db))
    return to_enqueue


def release_pending(db: DB, team_id: str | None = None) -> list[tuple[str, str]]:
    """Queue pending jobs whose dependencies all succeeded; cancel those with a failed one."""
    now = utcnow()
    query = select(Job.id, Job.kind, Job.depends_on).where(Job.status == "pending").limit(500)
    if team_id is not None:
        query = query.where(Job.team_id == team_id)
    pending = db.execute(query).all()
    released: list[tuple[str, str]] = []
    for job in pending:
        deps = dict(db.execute(select(Job.id, Job.status).where(Job.id.in_(job.depends_on))).tuples().all())
        broken = sorted(d for d in job.depends_on if deps.get(d) in ("failed", "cancelled", None))
        if broken:
            _change(db, job.id, "pending", {"status": "cancelled", "finished_at": now},
                    [("cancelled", {"reason": f"dependency {broken[0]} did not succeed"})], now)
        elif all(deps.get(d) == "succeeded" for d in job.depends_on):
            if _change(db, job.id, "pending", {"status": "queued", "enqueued_at": now},
                       [("queued", {})], now) is not None:
                released.append((job.id, job.kind))
    return released
