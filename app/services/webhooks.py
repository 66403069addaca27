"""The webhook outbox (docs/architecture.md, "Webhooks"): a delivery row per terminal state of a job, or of a
pipeline, with a `webhook_url`, written in the same transaction as the transition itself; the submit-time check
of a URL; the list of a job's or pipeline's deliveries. The workers' sweep sends them (workers/webhooks.py).

A job's delivery is keyed by the job and its terminal event's seq, so replaying a transition cannot deliver
twice, while a resumed job that ends again gets a delivery for its new end. On PostgreSQL a transition with one
event is one statement (app/services/transitions.py), which may run in autocommit: the outbox INSERT is then a
further CTE of that same statement (`with_outbox`), so the row exists exactly when the transition does.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, String, bindparam, cast, func, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.errors import InvalidRequest, NotFound
from app.models import TERMINAL_STATUSES, Job, Pipeline, WebhookDelivery, db_now, new_id, row_dict
from app.models.pipeline import pipeline_status
from app.services import webhook_targets
from app.settings import Settings

_PAYLOAD = WebhookDelivery.__table__.c.payload.type
_COLUMNS = ["id", "team_id", "job_id", "event_key", "event_type", "payload", "status", "attempts",
            "next_attempt_at", "created_at"]


# ---- the outbox, written with the transition -------------------------------------------------------------

def _job_data(job_id: str, values: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The body's `data` for a job's end (its kind and pipeline are added from the row)."""
    return {"object": "job", "id": job_id, "status": values["status"], "result": values.get("result"),
            "error": values.get("error"), "finished_at": now.isoformat()}


@functools.lru_cache(maxsize=64)
def with_outbox(logged: Select[Any]) -> Select[Any]:
    """PostgreSQL: `logged` (the transition's single statement, whose one FROM is its `changed` CTE) plus an
    INSERT of the job's delivery when the changed row has a webhook_url, so both land or neither does."""
    changed = logged.get_final_froms()[0]
    c = changed.c  # type: ignore[attr-defined]
    data = bindparam("w_data", type_=postgresql.JSONB).op("||")(func.jsonb_build_object(
        "kind", c.kind, "pipeline_id", c.pipeline_id, "pipeline_step", c.pipeline_step))
    rows = select(bindparam("w_id", type_=String), c.team_id, c.id, c.id + literal(":") + cast(c.event_seq, String),
                  bindparam("w_type", type_=String), data, literal("pending"), literal(0), db_now(),
                  bindparam("w_created_at", type_=WebhookDelivery.__table__.c.created_at.type)
                  ).where(c.webhook_url.is_not(None))
    hooked = postgresql.insert(WebhookDelivery).from_select(_COLUMNS, rows).on_conflict_do_nothing()
    return logged.add_cte(hooked.cte("hooked"))


def outbox_params(job_id: str, values: dict[str, Any], now: datetime) -> dict[str, Any]:
    return {"w_id": new_id("whd"), "w_type": f"job.{values['status']}", "w_data": _job_data(job_id, values, now),
            "w_created_at": now}


def _insert_once(conn: Connection, row: dict[str, Any]) -> None:
    """Insert a delivery unless one with its event_key exists."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(dialect.insert(WebhookDelivery).values(**row, next_attempt_at=db_now()).on_conflict_do_nothing())


def after_job_end(conn: Connection, row: Any, values: dict[str, Any], now: datetime, *,
                  outbox_written: bool = False) -> None:
    """Called by transitions.change, on its connection, after a job reached a terminal state: the job's
    delivery (unless `with_outbox` already wrote it), and the pipeline's when this was its last step."""
    if not outbox_written and row.webhook_url is not None:
        data = {**_job_data(row.id, values, now), "kind": row.kind, "pipeline_id": row.pipeline_id,
                "pipeline_step": row.pipeline_step}
        _insert_once(conn, {"id": new_id("whd"), "team_id": row.team_id, "job_id": row.id, "pipeline_id": None,
                            "event_key": f"{row.id}:{row.event_seq}", "event_type": f"job.{values['status']}",
                            "payload": data, "status": "pending", "attempts": 0, "created_at": now})
    if row.pipeline_id is not None:
        _after_step_end(conn, row.pipeline_id, now)


def _after_step_end(conn: Connection, pipeline_id: str, now: datetime) -> None:
    """When no step of the pipeline is unfinished any more: its delivery. The pipeline's row is locked first,
    so of two steps ending at once the second to commit sees the first one's end (PostgreSQL; SQLite has a
    single writer)."""
    pipeline = conn.execute(select(Pipeline.team_id, Pipeline.webhook_url).where(Pipeline.id == pipeline_id)
                            .with_for_update()).first()
    if pipeline is None or pipeline.webhook_url is None:
        return
    steps = conn.execute(select(Job.id, Job.pipeline_step, Job.status, Job.event_seq)
                         .where(Job.pipeline_id == pipeline_id)).all()
    if not steps or any(s.status not in TERMINAL_STATUSES for s in steps):
        return
    status = pipeline_status({s.status for s in steps})
    # Any later change of a step (a resume) bumps its event_seq, so a pipeline that ends again is a new event.
    version = sum(s.event_seq for s in steps)
    data = {"object": "pipeline", "id": pipeline_id, "status": status, "finished_at": now.isoformat(),
            "steps": {s.pipeline_step: {"job_id": s.id, "status": s.status} for s in steps}}
    _insert_once(conn, {"id": new_id("whd"), "team_id": pipeline.team_id, "job_id": None,
                        "pipeline_id": pipeline_id, "event_key": f"{pipeline_id}:{version}",
                        "event_type": f"pipeline.{status}", "payload": data, "status": "pending", "attempts": 0,
                        "created_at": now})


# ---- submit ----------------------------------------------------------------------------------------------

def check_url(url: str | None, settings: Settings, loc: list[str | int],
              resolver: webhook_targets.Resolver | None = None) -> None:
    """A 422 naming `loc` when `url` could not be called: no signing secret on this server, not http(s), or a
    host that resolves to an address the settings refuse (checked again at every send). No DNS without a URL."""
    if url is None:
        return
    field = loc[-1]
    if settings.webhook_secret is None:
        raise InvalidRequest(f"{field}: this server has no TUNEQ_WEBHOOK_SECRET to sign webhooks with; ask an "
                             f"operator to set it, or leave {field} out.",
                             errors=[{"loc": loc, "msg": "webhooks are not configured"}])
    policy = webhook_targets.AddressPolicy(settings)
    try:
        host, port = webhook_targets.target(url)
        policy.check(host, port, resolver or webhook_targets.system_resolver(settings.webhook_timeout_seconds))
    except (webhook_targets.TargetRefused, webhook_targets.TargetUnresolved) as exc:
        raise InvalidRequest(f"{field}: {exc}; give a URL of a public http(s) endpoint.",
                             errors=[{"loc": loc, "msg": str(exc)}]) from None


# ---- reading ---------------------------------------------------------------------------------------------

DELIVERY_COLUMNS = (
    WebhookDelivery.id, WebhookDelivery.job_id, WebhookDelivery.pipeline_id, WebhookDelivery.event_type,
    WebhookDelivery.status, WebhookDelivery.attempts, WebhookDelivery.last_status_code, WebhookDelivery.last_error,
    WebhookDelivery.created_at, WebhookDelivery.last_attempt_at, WebhookDelivery.next_attempt_at,
    WebhookDelivery.delivered_at,
)
_TIMES = ("created_at", "last_attempt_at", "next_attempt_at", "delivered_at")


def list_deliveries(session: Session, *, team_id: str, job_id: str | None = None, pipeline_id: str | None = None,
                    limit: int = 50, cursor: str | None = None) -> tuple[list[dict[str, Any]], bool, str | None]:
    """A job's (or pipeline's) deliveries, oldest first; 404 unless it is the team's."""
    if job_id is not None:
        owner = select(Job.id).where(Job.id == job_id, Job.team_id == team_id)
        query = select(*DELIVERY_COLUMNS).where(WebhookDelivery.job_id == job_id)
        what = f"job {job_id}"
    else:
        owner = select(Pipeline.id).where(Pipeline.id == pipeline_id, Pipeline.team_id == team_id)
        query = select(*DELIVERY_COLUMNS).where(WebhookDelivery.pipeline_id == pipeline_id)
        what = f"pipeline {pipeline_id}"
    if session.execute(owner).first() is None:
        raise NotFound(f"No {what} in your team.")
    if cursor:
        query = query.where(WebhookDelivery.id > cursor)
    rows = session.execute(query.where(WebhookDelivery.team_id == team_id).order_by(WebhookDelivery.id)
                           .limit(limit + 1)).all()
    data = [row_dict(r, *_TIMES) for r in rows[:limit]]
    for item in data:
        if item["status"] != "pending":
            item["next_attempt_at"] = None
    has_more = len(rows) > limit
    return data, has_more, (data[-1]["id"] if has_more else None)
