"""Every job status change, as compare-and-set UPDATEs (docs/architecture.md, "Lifecycle").

Each change bumps `job.event_seq` in the same UPDATE that checks the expected state, then appends
its events with those sequence numbers, all in the caller's transaction; on PostgreSQL a change with one
event is a single statement, which app.db.run_statement runs in autocommit. A write made by a worker also
matches its `lease_token`: zero rows means the lease moved on, and the worker must stop.

Times that decide ownership (heartbeats, lease expiry, retry backoff) come from the database's clock
(`db_now`), never from a host's. Attempts count a job's own failures; a preemption (lost worker, shutdown,
stall) hands the job back with `preempted` set, and the next claim resumes without spending an attempt.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Float,
    Select,
    Update,
    and_,
    bindparam,
    case,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from app.models import TERMINAL_STATUSES, Job, JobEvent, db_now, utcnow
from app.services import webhooks
from app.settings import get_settings

Event = tuple[str, dict[str, Any]]
DB = Session | Connection  # a session, or a bare connection from app.db.run_statement
Wakeup = tuple[str, str, bool]  # (job_id, kind, resumed): resumed wake-ups go before new ones


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
    preemptions: int = 0
    stall_seconds: float | None = None


def error_body(code: str, message: str, *, user_error: bool, details: dict[str, Any] | None = None) -> dict:
    return {"code": code, "message": message, "user_error": user_error, "details": details or {}}


class Sql:
    """A value the database computes in the UPDATE itself. Named, so the statement stays cacheable."""

    def __init__(self, name: str) -> None:
        self.name = name


INCREMENT = Sql("increment")
NOW = Sql("now")
_TAKEOVER = or_(Job.preempted, Job.status == "running")  # the claim resumes a preempted run
_EXPRESSIONS: dict[str, Callable[[Any], Any]] = {
    "increment": lambda col: col + 1,
    "now": lambda col: db_now(),
    "later": lambda col: db_now(bindparam("x_delay", type_=Float)),
    "attempt_unless_resuming": lambda col: col + case((_TAKEOVER, 0), else_=1),
    "count_takeover": lambda col: col + case((Job.status == "running", 1), else_=0),
}
ATTEMPT_UNLESS_RESUMING = Sql("attempt_unless_resuming")
COUNT_TAKEOVER = Sql("count_takeover")
LATER = Sql("later")  # now + the `delay` given to _change


def _lease_cutoff() -> ColumnElement[Any]:
    return db_now(-bindparam("g_lease", type_=Float))


# Guards name the expected state of a compare-and-set; their parameters are bound at execution time.
_GUARDS: dict[str, Callable[[], list[ColumnElement[bool]]]] = {
    "claimable": lambda: [
        Job.attempt < Job.max_attempts,
        or_(and_(Job.status == "queued", or_(Job.not_before.is_(None), Job.not_before <= db_now())),
            and_(Job.status == "running", Job.heartbeat_at < _lease_cutoff())),
    ],
    # Claimable, and the team runs fewer than `g_cap` jobs of this kind (TUNEQ_MAX_RUNNING_PER_TEAM).
    "claimable_capped": lambda: [*_GUARDS["claimable"](), _running_of_team_and_kind() < bindparam("g_cap")],
    "leased": lambda: [Job.lease_token == bindparam("g_token"), Job.status == "running"],
    # The reaper re-checks staleness in the UPDATE itself: a heartbeat that lands first wins.
    "stale": lambda: [Job.lease_token == bindparam("g_token"), Job.status == "running",
                      Job.heartbeat_at < _lease_cutoff()],
    "waiting": lambda: [Job.status.in_(("pending", "queued"))],
    "running_not_cancelling": lambda: [Job.status == "running", Job.cancel_requested_at.is_(None)],
    "queued_due_unsent": lambda: [Job.status == "queued", Job.enqueued_at.is_(None),
                                  or_(Job.not_before.is_(None), Job.not_before <= db_now())],
    "queued_sent_at": lambda: [Job.status == "queued", Job.enqueued_at == bindparam("g_enqueued_at")],
    "pending": lambda: [Job.status == "pending"],
    "ended": lambda: [Job.status.in_(("failed", "cancelled"))],
}
_RETURNING = (Job.id, Job.event_seq, Job.attempt, Job.max_attempts, Job.team_id, Job.kind, Job.spec, Job.lease_token,
              Job.cancel_requested_at, Job.has_dependents, Job.preemptions, Job.stall_seconds, Job.preempted,
              Job.webhook_url, Job.pipeline_id, Job.pipeline_step)  # the last three: app/services/webhooks.py
_INSERT_EVENTS = insert(JobEvent)


@functools.lru_cache(maxsize=256)
def _statement(guard: str, keys: tuple[str, ...], computed: tuple[tuple[str, str], ...]) -> Update:
    """One UPDATE per (guard, columns) shape, built once: SQLAlchemy's hot path is then just execution."""
    columns = Job.__table__.c
    values: dict[str, Any] = {k: bindparam(f"v_{k}", type_=columns[k].type) for k in keys}
    values.update({k: _EXPRESSIONS[name](columns[k]) for k, name in computed})
    values["event_seq"] = Job.event_seq + bindparam("n_events")
    return (update(Job).where(Job.id == bindparam("g_job_id"), *_GUARDS[guard]()).values(**values)
            .returning(*_RETURNING))


@functools.lru_cache(maxsize=256)
def _statement_logged(guard: str, keys: tuple[str, ...], computed: tuple[tuple[str, str], ...]) -> Select[Any]:
    """PostgreSQL: the UPDATE and its one event INSERT in a single statement (one round trip, not two)."""
    changed = _statement(guard, keys, computed).cte("changed")
    events = JobEvent.__table__.c
    logged = insert(JobEvent).from_select(
        ["job_id", "seq", "type", "data", "attempt", "lease_token", "created_at"],
        select(changed.c.id, changed.c.event_seq, bindparam("e_type", type_=events.type.type),
               bindparam("e_data", type_=events.data.type), changed.c.attempt, changed.c.lease_token,
               bindparam("e_created_at", type_=events.created_at.type)),
    ).cte("logged")
    return select(changed).add_cte(logged)


def change(
    db: DB,
    job_id: str,
    guard: str,
    values: dict[str, Any],
    events: list[Event],
    now: datetime,
    *,
    delay: float | None = None,
    **guard_params: Any,
) -> Any:
    """Apply `values` if the job is in the `guard` state and append `events`; the updated row or None."""
    values = {**values, "updated_at": now}
    keys = tuple(sorted(k for k, v in values.items() if not isinstance(v, Sql)))
    computed = tuple(sorted((k, v.name) for k, v in values.items() if isinstance(v, Sql)))
    params = {f"v_{k}": values[k] for k in keys}
    params.update({f"g_{k}": v for k, v in guard_params.items()}, g_job_id=job_id, n_events=len(events))
    if delay is not None:
        params["x_delay"] = delay
    conn = db.connection() if isinstance(db, Session) else db  # Core, not ORM-enabled: runs for every job step
    ending = values.get("status") in TERMINAL_STATUSES  # owes a webhook delivery if the job has a webhook_url
    if len(events) == 1 and conn.dialect.name == "postgresql":
        (type_, data), = events
        params.update(e_type=type_, e_data=data, e_created_at=now)
        statement = _statement_logged(guard, keys, computed)
        if ending:  # the outbox row in the same statement, which may run in autocommit (app.db.run_statement)
            statement = webhooks.with_outbox(statement)
            params.update(webhooks.outbox_params(job_id, values, now))
        logged = conn.execute(statement, params).first()
        if logged is not None and ending:
            webhooks.after_job_end(conn, logged, values, now, outbox_written=True)
        return logged
    row = conn.execute(_statement(guard, keys, computed), params).first()
    if row is None or not events:
        return row
    if ending:
        webhooks.after_job_end(conn, row, values, now)
    first = row.event_seq - len(events) + 1
    conn.execute(
        _INSERT_EVENTS,
        [
            {"job_id": job_id, "seq": first + i, "type": t, "data": d, "attempt": row.attempt,
             "lease_token": row.lease_token, "created_at": now}
            for i, (t, d) in enumerate(events)
        ],
    )
    return row


# ---- worker side -----------------------------------------------------------------------------


def _running_of_team_and_kind() -> Any:
    """How many other jobs of this job's team and kind run now (a scalar subquery of the claim's UPDATE)."""
    other = Job.__table__.alias("other")
    return (select(func.count()).select_from(other)
            .where(other.c.team_id == Job.team_id, other.c.kind == Job.kind, other.c.status == "running",
                   other.c.id != Job.id).scalar_subquery())


def claim(db: DB, job_id: str, *, owner: str, lease_seconds: float,
          running_caps: Mapping[str, int] | None = None) -> Claim | None:
    """Take the job if it is queued (and due), or running under a lease that went stale. None: not ours.
    A preempted job (or a stale one taken over) resumes the same attempt; anything else starts a new one.

    With a cap for the job's kind (`running_caps`, default TUNEQ_MAX_RUNNING_PER_TEAM), the same UPDATE also
    requires the team to run fewer jobs of that kind; a job over the cap stays queued, spending no attempt and
    no preemption, and the reaper sends its wake-up again later (docs/architecture.md, "Reaper", step 3).
    Two claims racing on PostgreSQL can each see the other's job still queued, so a cap can be passed by the
    claims that land in the same instant; SQLite serialises them."""
    now = utcnow()
    caps = get_settings().max_running_per_team if running_caps is None else running_caps
    cap = None
    if caps:
        kind = db.execute(select(Job.kind).where(Job.id == job_id)).scalar_one_or_none()
        cap = caps.get(kind) if kind is not None else None
    guard: dict[str, Any] = {} if cap is None else {"cap": cap}
    row = change(
        db,
        job_id,
        "claimable" if cap is None else "claimable_capped",
        {"status": "running", "lease_owner": owner, "lease_token": INCREMENT, "heartbeat_at": NOW,
         "progress_at": NOW, "attempt": ATTEMPT_UNLESS_RESUMING, "preemptions": COUNT_TAKEOVER,
         "preempted": False, "not_before": None, "started_at": now},
        [("running", {"owner": owner})],
        now,
        lease=lease_seconds,
        **guard,
    )
    if row is None:
        return None
    return Claim(job_id, row.team_id, row.kind, row.spec, row.lease_token, row.attempt, row.max_attempts,
                 row.preemptions, row.stall_seconds)


def heartbeat(db: DB, job_id: str, token: int) -> bool:
    """Renew the lease. Returns True when a cancel was requested. Raises LeaseLost."""
    now = utcnow()
    row = change(db, job_id, "leased", {"heartbeat_at": NOW}, [], now, token=token)
    if row is None:
        raise LeaseLost(job_id)
    return row.cancel_requested_at is not None


def fenced_update(
    db: DB, job_id: str, token: int, values: dict[str, Any], events: list[Event] | None = None
) -> bool:
    """A worker's write; it is also a sign of progress. Returns True when a cancel was requested.
    Raises LeaseLost."""
    now = utcnow()
    row = change(db, job_id, "leased", {**values, "heartbeat_at": NOW, "progress_at": NOW}, events or [], now,
                  token=token)
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
    row = change(db, job_id, "leased", values, [(status, data)], now, token=token)
    if row is None:
        raise LeaseLost(job_id)
    return bool(row.has_dependents)


def _too_many_preemptions(preemptions: int, why: str) -> dict[str, Any]:
    return error_body(
        "too_many_preemptions",
        f"The job was interrupted by the infrastructure {preemptions} times (last: {why}), the most this server "
        "allows (TUNEQ_MAX_PREEMPTIONS). Check the workers' logs for crashes or out-of-memory kills; "
        "`POST /v1/jobs/{id}/resume` continues it from its last checkpoint.",
        user_error=False,
    )


def retry_later(db: DB, job_id: str, token: int, error: dict[str, Any], *, delay_seconds: float) -> bool:
    """Give the job's own transient failure another attempt after `delay_seconds` (the reaper sends the
    wake-up when it is due). False when attempts are used up (job failed)."""
    now = utcnow()
    row = db.execute(select(Job.attempt, Job.max_attempts).where(Job.id == job_id)).first()
    if row is not None and row.attempt >= row.max_attempts:
        finish(db, job_id, token, "failed", error=error)
        return False
    values = {"status": "queued", "lease_owner": None, "enqueued_at": None, "not_before": LATER, "error": error,
              "preempted": False}
    event = ("retrying", {"error": error, "retry_in_seconds": round(delay_seconds, 1)})
    if change(db, job_id, "leased", values, [event], now, token=token, delay=delay_seconds) is None:
        raise LeaseLost(job_id)
    return True


def preempt(db: DB, job_id: str, guard: str, now: datetime, *, preemptions: int, max_preemptions: int,
             reason: str, why: str, details: dict[str, Any], **guard_params: Any) -> bool | None:
    """Hand the job back so it resumes without spending an attempt (True), or fail it once its preemptions are
    used up (False). None: the job was not in the `guard` state."""
    if preemptions + 1 > max_preemptions:
        err = _too_many_preemptions(preemptions + 1, why)
        failed = change(db, job_id, guard, {"status": "failed", "finished_at": now, "lease_owner": None,
                                             "error": err}, [("failed", {"error": err})], now, **guard_params)
        return None if failed is None else False
    handed_back = change(db, job_id, guard, {"status": "queued", "lease_owner": None, "enqueued_at": NOW,
                                              "preempted": True, "preemptions": INCREMENT},
                          [("preempted", {"reason": reason, **details})], now, **guard_params)
    return None if handed_back is None else True


def hand_back(db: DB, job_id: str, token: int, *, reason: str, max_preemptions: int,
              details: dict[str, Any] | None = None) -> bool:
    """The worker gives the job back (shutdown, stall, the database went away): it resumes elsewhere without
    spending an attempt. True: queued again (send a resumed wake-up); False: preemptions used up (failed).
    Raises LeaseLost."""
    preemptions = db.execute(select(Job.preemptions).where(Job.id == job_id)).scalar_one_or_none() or 0
    requeued = preempt(db, job_id, "leased", utcnow(), preemptions=preemptions, max_preemptions=max_preemptions,
                        reason=reason, why=reason, details=details or {}, token=token)
    if requeued is None:
        raise LeaseLost(job_id)
    return requeued


# ---- API side --------------------------------------------------------------------------------


def request_cancel(db: DB, job_id: str) -> None:
    """Cancel now if no worker runs it; otherwise ask the worker to stop at its next step."""
    now = utcnow()
    done = change(
        db,
        job_id,
        "waiting",
        {"status": "cancelled", "finished_at": now, "cancel_requested_at": now},
        [("cancelled", {"reason": "cancelled by request"})],
        now,
    )
    if done is None:
        change(
            db,
            job_id,
            "running_not_cancelling",
            {"cancel_requested_at": now},
            [("cancel_requested", {})],
            now,
        )


def resume(db: DB, job_id: str, previous_status: str) -> Any:
    """Queue a failed or cancelled job again as the same run, with a fresh attempt budget; its pipeline
    continues from what it saved (training: the last checkpoint). The row, or None if it is not ended."""
    now = utcnow()
    return change(db, job_id, "ended",
                   {"status": "queued", "finished_at": None, "error": None, "cancel_requested_at": None,
                    "attempt": 0, "preemptions": 0, "preempted": False, "not_before": None, "lease_owner": None,
                    "enqueued_at": NOW},
                   [("resumed", {"by": "request", "previous_status": previous_status})], now)


def mark_sent(db: DB, job_id: str, expected_enqueued_at: datetime | None) -> bool:
    """Note that a wake-up is being sent; False if someone else just did it."""
    now = utcnow()
    if expected_enqueued_at is None:
        return change(db, job_id, "queued_due_unsent", {"enqueued_at": NOW}, [], now) is not None
    return change(db, job_id, "queued_sent_at", {"enqueued_at": NOW}, [], now,
                   enqueued_at=expected_enqueued_at) is not None
