"""The reaper: recovers lost work every few seconds (docs/architecture.md, "Reaper").

It runs in every API process and in every worker's main process, so it works when no API runs; a lock
(PostgreSQL advisory lock, or the `lock` row on SQLite) lets one pass run at a time. It takes over jobs whose
heartbeat went stale, sends wake-ups that are due (new jobs, retries after their backoff), re-sends those
that are likely lost — all after a broker restart; otherwise, per kind, as many of the oldest waiting jobs as the
broker holds fewer wake-ups than there are queued jobs — and settles pending jobs whose dependencies ended.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping

from sqlalchemy import Engine, case, func, or_, select, text, update
from sqlalchemy.orm import Session

from app import queue
from app.db import session_scope
from app.models import Job, Lock, db_now, utcnow
from app.services import dependencies, retention, transitions
from app.services.transitions import DB, Wakeup
from app.settings import Settings

log = logging.getLogger("tuneq.reaper")

REAPER_LOCK_KEY = 0x74756E65  # "tune": the PostgreSQL advisory lock the reaper holds for its pass


def take_reaper_lock(db: Session, holder: str, ttl_seconds: float) -> bool:
    """One reaper at a time across every API and worker process. PostgreSQL: an advisory lock held until
    this transaction ends. SQLite: the `lock` row, taken in its own short transaction (so a waiting
    reaper is not held on SQLite's write lock) and held until it expires; its holder renews it each pass."""
    engine = db.get_bind()
    if engine.dialect.name == "postgresql":
        return bool(db.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": REAPER_LOCK_KEY}).scalar())
    assert isinstance(engine, Engine)
    with engine.begin() as conn:
        taken = conn.execute(
            update(Lock).where(Lock.name == "reaper",
                               or_(Lock.expires_at.is_(None), Lock.expires_at < db_now(), Lock.holder == holder))
            .values(holder=holder, expires_at=db_now(ttl_seconds))
        )
        return bool(taken.rowcount)


def likely_lost(db: Session, requeue_after_seconds: float, waiting_messages: Callable[[str], int | None]
                ) -> dict[str, int | None]:
    """Per kind, how many wake-ups are likely lost: queued jobs whose wake-up was sent, minus the messages the
    broker still holds for that kind (FIFO: the ones left are the newest, so the lost ones are the oldest),
    counting only jobs that have waited over `requeue_after_seconds`. None: the broker could not tell."""
    stale = func.sum(case((Job.enqueued_at < db_now(-requeue_after_seconds), 1), else_=0))
    rows = db.execute(select(Job.kind, func.count(), stale)
                      .where(Job.status == "queued", Job.enqueued_at.is_not(None)).group_by(Job.kind)).all()
    lost: dict[str, int | None] = {}
    for kind, sent, old in rows:
        if not old:
            continue
        waiting = waiting_messages(kind)
        if waiting is None:
            lost[kind] = None
        elif sent > waiting:
            lost[kind] = min(int(old), sent - waiting)
    return lost


class Reaper:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._broker_seen: str | None = None

    def _broker_restarted(self) -> bool:
        """True once after the broker's identity changed (its queues, and our wake-ups in them, are gone)."""
        current = queue.broker_instance()
        if current is None:
            return False
        restarted = self._broker_seen is not None and current != self._broker_seen
        self._broker_seen = current
        return restarted

    def run_pass(self) -> int:
        """One pass; returns how many wake-ups it sent (0 when another process holds the lock)."""
        settings = self.settings
        restarted = self._broker_restarted()
        with session_scope() as session:
            if not take_reaper_lock(session, self.holder, ttl_seconds=3 * settings.reaper_interval_seconds):
                return 0
            # Wake-ups are only re-sent when likely lost, so a queue's length keeps meaning "jobs waiting".
            lost = {} if restarted else likely_lost(session, settings.requeue_after_seconds, queue.waiting_messages)
            to_enqueue = reap(
                session, lease_seconds=settings.lease_seconds, requeue_after_seconds=settings.requeue_after_seconds,
                max_preemptions=settings.max_preemptions, resend=lost, resend_all=restarted,
            )
        if restarted:
            log.warning("the broker restarted; sending the wake-ups of every queued job again")
        for job_id, kind, resumed in to_enqueue:
            queue.enqueue(job_id, kind, resumed=resumed)
        return len(to_enqueue)


class ReaperThread(threading.Thread):
    """Runs reaper passes every TUNEQ_REAPER_INTERVAL_SECONDS until stopped."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="tuneq-reaper", daemon=True)
        self.reaper = Reaper(settings)
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.reaper.settings.reaper_interval_seconds):
            try:
                self.reaper.run_pass()
            except Exception as exc:
                log.warning("reaper pass failed (%s); trying again next interval", type(exc).__name__)
            try:  # outputs of long-failed jobs (app/services/retention.py); due at most once per sweep interval
                retention.run_if_due(self.reaper.settings, self.reaper.holder)
            except Exception as exc:
                log.warning("retention sweep failed (%s); trying again next interval", type(exc).__name__)


def reap(db: DB, *, lease_seconds: float, requeue_after_seconds: float, max_preemptions: int,
         resend: Mapping[str, int | None] | None = None, resend_all: bool = False,
         limit: int = 500) -> list[Wakeup]:
    """Recover jobs whose worker stopped heartbeating, send wake-ups that are due (new, retried after their
    backoff), re-send those likely lost — per kind in `resend`, that many of the jobs that have waited over
    `requeue_after_seconds`, oldest first (None: all of them); every queued job's with `resend_all`, after the
    broker restarted — and settle pending jobs. Returns the wake-ups to send after commit."""
    now = utcnow()
    to_enqueue: list[Wakeup] = []
    stale = db.execute(
        select(Job.id, Job.kind, Job.attempt, Job.preemptions, Job.lease_token, Job.lease_owner,
               Job.cancel_requested_at)
        .where(Job.status == "running", Job.heartbeat_at < db_now(-lease_seconds))
        .order_by(Job.heartbeat_at).limit(limit)
    ).all()
    for job in stale:
        lost = {"previous_owner": job.lease_owner, "attempt": job.attempt}
        guard = {"token": job.lease_token, "lease": lease_seconds}
        if job.cancel_requested_at is not None:
            transitions.change(db, job.id, "stale", {"status": "cancelled", "finished_at": now, "lease_owner": None},
                    [("cancelled", {"reason": "cancel requested; its worker stopped responding", **lost})], now,
                    **guard)
        elif transitions.preempt(db, job.id, "stale", now, preemptions=job.preemptions, max_preemptions=max_preemptions,
                      reason="worker_lost", why="its worker stopped sending heartbeats", details=lost, **guard):
            to_enqueue.append((job.id, job.kind, True))

    due = db.execute(
        select(Job.id, Job.kind, Job.preempted, Job.attempt)
        .where(Job.status == "queued", Job.enqueued_at.is_(None),
               or_(Job.not_before.is_(None), Job.not_before <= db_now()))
        .order_by(Job.id).limit(limit)
    ).all()
    for unsent in due:
        if transitions.mark_sent(db, unsent.id, None):
            to_enqueue.append((unsent.id, unsent.kind, bool(unsent.preempted or unsent.attempt)))

    columns = (Job.id, Job.kind, Job.enqueued_at, Job.preempted, Job.attempt)
    sent = (Job.status == "queued", Job.enqueued_at.is_not(None))
    batches = [select(*columns).where(*sent).order_by(Job.enqueued_at).limit(limit)] if resend_all else [
        select(*columns).where(*sent, Job.kind == kind, Job.enqueued_at < db_now(-requeue_after_seconds))
        .order_by(Job.enqueued_at).limit(min(limit, count if count is not None else limit))
        for kind, count in sorted((resend or {}).items())
    ]
    for query in batches:
        for waiting in db.execute(query).all():
            if transitions.mark_sent(db, waiting.id, waiting.enqueued_at):
                to_enqueue.append((waiting.id, waiting.kind, bool(waiting.preempted or waiting.attempt)))

    to_enqueue.extend(dependencies.release_pending(db, limit=limit))
    return to_enqueue
