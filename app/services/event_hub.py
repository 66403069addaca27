"""One event hub per API process: every SSE stream and every `/wait` is fed from it (docs/architecture.md,
"Watching a job").

The hub learns that a job has new events from one source per process, then reads those events ONCE and fans
them out in memory to every subscriber of that job, so the SQL cost follows the event rate, not the number of
watchers:

- PostgreSQL: a trigger on `job_event` `pg_notify`s the job id on channel `tuneq_job_event`; the hub LISTENs on
  one dedicated asyncpg connection and reconnects after a blip (then every watched job is re-read, since
  notifications sent meanwhile are lost). Ids can commit out of order there, so the hub never tails by id.
- SQLite (one writer, so ids commit in order): one tail of `job_event` by its autoincrement id per process.

Per job the hub keeps a cursor (the last `seq` it read). Seqs of one job commit in order (each comes from the
UPDATE of the job row, which holds the row lock until commit), so "seq > cursor" misses nothing. A subscriber
registers before its own replay read and then calls `caught_up`; if the hub's cursor is ahead of the replay,
the subscriber reads the gap itself. A subscriber that falls behind (backlog full) is flagged for resync from
SQL instead of growing memory; subscribers de-duplicate by `seq`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from app.db import DatabaseUnavailable, in_sql_thread, is_transient, session_scope
from app.models import JobEvent
from app.models.base import row_dict
from app.services.jobs import EVENT_COLUMNS

log = logging.getLogger("tuneq.events")

CHANNEL = "tuneq_job_event"
TAIL_SECONDS = 0.2  # SQLite: the one per-process look for new events
RETRY_SECONDS = 1.0  # a read or the LISTEN connection failed: try again after this long (doubling, capped)
MAX_RETRY_SECONDS = 5.0
PROBE_SECONDS = 10.0  # PostgreSQL: how often the LISTEN connection is checked for life
READ_LIMIT = 2000  # events per hub read; more are read by the next pass
JOBS_PER_READ = 100
# Every subscriber is woken this often even when nothing happens: its stream then re-checks its API key (when
# due) and sends a ping (when due). One timer for the process instead of one per stream.
TICK_SECONDS = 1.0
MAX_BACKLOG = 256  # batches a subscriber may hold before it is resynchronised from SQL


@dataclass(eq=False)
class Subscriber:
    """One watcher of one job. `batches` holds event lists in seq order; `resync` means some were dropped
    (the backlog was full) and the watcher must re-read SQL from its last seq."""

    job_id: str
    batches: deque[list[dict[str, Any]]] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    resync: bool = False

    def push(self, batch: list[dict[str, Any]]) -> None:
        if len(self.batches) >= MAX_BACKLOG:
            self.batches.clear()
            self.resync = True
        else:
            self.batches.append(batch)
        self.wake.set()

    def take(self) -> list[dict[str, Any]]:
        """Every event queued so far, in order (may repeat seqs the watcher has: it de-duplicates)."""
        self.wake.clear()
        out = [event for batch in self.batches for event in batch]
        self.batches.clear()
        return out


@dataclass(eq=False)
class _Watched:
    subscribers: set[Subscriber] = field(default_factory=set)
    cursor: int | None = None  # the last seq the hub read; None until a subscriber's replay set it
    pending: bool = False  # new events were announced while the cursor was unknown


def _read_events(cursors: dict[str, int], limit: int) -> list[dict[str, Any]]:
    """Events after each job's cursor, ordered by (job, seq); each dict carries its `job_id`."""
    with session_scope() as session:
        condition = or_(*(and_(JobEvent.job_id == job, JobEvent.seq > after) for job, after in cursors.items()))
        rows = session.execute(
            select(JobEvent.job_id, *EVENT_COLUMNS).where(condition).order_by(JobEvent.job_id, JobEvent.seq)
            .limit(limit)
        ).all()
        return [row_dict(r, "created_at") for r in rows]


def _max_event_id(session: Session) -> int:
    return int(session.execute(select(func.coalesce(func.max(JobEvent.id), 0))).scalar_one())


def _tail(after_id: int, limit: int) -> tuple[int, set[str]]:
    """SQLite: (the highest event id seen, the jobs with events after `after_id`)."""
    with session_scope() as session:
        if after_id < 0:
            return _max_event_id(session), set()
        rows = session.execute(
            select(JobEvent.id, JobEvent.job_id).where(JobEvent.id > after_id).order_by(JobEvent.id).limit(limit)
        ).all()
    return (rows[-1][0] if rows else after_id), {r[1] for r in rows}


def _resolver(future: asyncio.Future[None]) -> Any:
    def resolve(_conn: Any) -> None:
        if not future.done():
            future.set_result(None)

    return resolve


class EventHub:
    def __init__(self, database_url: str) -> None:
        self.url = database_url
        self._jobs: dict[str, _Watched] = {}
        self._dirty: set[str] = set()
        self._dirty_event: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # Counters (tests and bench/watchers.py): SQL reads of events, wake-ups received, connection state.
        self.reads = 0
        self.tail_reads = 0
        self.notifications = 0
        self.listening = False

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._dirty_event = asyncio.Event()
        self._tasks.append(asyncio.create_task(self._reader(), name="event-hub-reader"))
        source = self._listen() if self.url.startswith("postgresql") else self._tail_loop()
        self._tasks.append(asyncio.create_task(source, name="event-hub-source"))
        self._tasks.append(asyncio.create_task(self._ticker(), name="event-hub-ticker"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        for watched in self._jobs.values():
            for sub in watched.subscribers:
                sub.wake.set()

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    # ---- subscribers --------------------------------------------------------------------------

    def subscribe(self, job_id: str) -> Subscriber:
        """Register a watcher; do this BEFORE the watcher's replay read, then call `caught_up`."""
        sub = Subscriber(job_id)
        self._jobs.setdefault(job_id, _Watched()).subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        watched = self._jobs.get(sub.job_id)
        if watched is None:
            return
        watched.subscribers.discard(sub)
        if not watched.subscribers:
            del self._jobs[sub.job_id]
            self._dirty.discard(sub.job_id)

    def caught_up(self, sub: Subscriber, seq: int) -> int:
        """The watcher's replay reached `seq`. Returns the hub's cursor for the job: when it is above `seq`, the
        watcher must read the events between itself (the hub has already read and sent them)."""
        watched = self._jobs.get(sub.job_id)
        if watched is None:
            return seq
        if watched.cursor is None:
            watched.cursor = seq
            if watched.pending:
                watched.pending = False
                self._mark(sub.job_id)
        return watched.cursor

    def watchers(self) -> int:
        return sum(len(w.subscribers) for w in self._jobs.values())

    # ---- the one read per batch of wake-ups ----------------------------------------------------

    def _mark(self, job_id: str) -> None:
        watched = self._jobs.get(job_id)
        if watched is None:
            return
        if watched.cursor is None:
            watched.pending = True
            return
        self._dirty.add(job_id)
        if self._dirty_event is not None:
            self._dirty_event.set()

    def _mark_all(self) -> None:
        for job_id in list(self._jobs):
            self._mark(job_id)

    async def _reader(self) -> None:
        assert self._dirty_event is not None
        delay = RETRY_SECONDS
        while True:
            await self._dirty_event.wait()
            self._dirty_event.clear()
            jobs, self._dirty = self._dirty, set()
            try:
                await self._read(jobs)
                delay = RETRY_SECONDS
            except Exception as exc:
                if not (is_transient(exc) or isinstance(exc, DatabaseUnavailable)):
                    log.exception("event hub: reading events failed")
                else:
                    log.warning("event hub: database unreachable (%s); retrying", type(exc).__name__)
                self._dirty |= {j for j in jobs if j in self._jobs}
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_SECONDS)
                self._dirty_event.set()

    async def _read(self, jobs: set[str]) -> None:
        cursors = {j: w.cursor for j in jobs if (w := self._jobs.get(j)) is not None and w.cursor is not None}
        items = list(cursors.items())
        for start in range(0, len(items), JOBS_PER_READ):
            chunk = dict(items[start:start + JOBS_PER_READ])
            self.reads += 1
            events = await in_sql_thread(_read_events, chunk, READ_LIMIT)
            if len(events) >= READ_LIMIT:  # more than one read's worth: the next pass goes on from the cursors
                for job_id in chunk:
                    self._mark(job_id)
            self._fan_out(events)

    def _fan_out(self, events: list[dict[str, Any]]) -> None:
        by_job: dict[str, list[dict[str, Any]]] = {}
        for event in events:
            by_job.setdefault(event.pop("job_id"), []).append(event)
        for job_id, batch in by_job.items():
            watched = self._jobs.get(job_id)
            if watched is None:
                continue
            if watched.cursor is not None:
                batch = [e for e in batch if e["seq"] > watched.cursor]
            if not batch:
                continue
            watched.cursor = batch[-1]["seq"]
            for sub in watched.subscribers:
                sub.push(batch)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            for watched in list(self._jobs.values()):
                for sub in watched.subscribers:
                    sub.wake.set()

    # ---- sources --------------------------------------------------------------------------------

    async def _tail_loop(self) -> None:
        """SQLite: one look at new event ids per TAIL_SECONDS for the whole process."""
        last = -1
        while True:
            try:
                self.tail_reads += 1
                first = last < 0
                last, jobs = await in_sql_thread(_tail, last, READ_LIMIT)
                if first:  # where the tail starts: whoever subscribed before gets a read of their jobs
                    self._mark_all()
                self.notifications += len(jobs)
                for job_id in jobs:
                    self._mark(job_id)
            except Exception as exc:
                log.warning("event hub: tail failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(RETRY_SECONDS)
            await asyncio.sleep(TAIL_SECONDS)

    async def _listen(self) -> None:
        """PostgreSQL: LISTEN on one dedicated connection; reconnect after a blip and re-read watched jobs."""
        import asyncpg

        dsn = "postgresql://" + self.url.split("://", 1)[1]
        delay = RETRY_SECONDS
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(dsn, timeout=5, server_settings={
                    "tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5", "tcp_keepalives_count": "3"})
                lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                conn.add_termination_listener(_resolver(lost))
                await conn.add_listener(CHANNEL, self._notified)
                self.listening = True
                delay = RETRY_SECONDS
                self._mark_all()  # anything announced while we were not listening
                while not lost.done():
                    await asyncio.wait([lost], timeout=PROBE_SECONDS)
                    if not lost.done():
                        await conn.fetchval("SELECT 1", timeout=5)
                raise ConnectionError("LISTEN connection closed")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event hub: LISTEN connection lost (%s); reconnecting in %.1f s",
                            type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_SECONDS)
            finally:
                self.listening = False
                if conn is not None:
                    conn.terminate()

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.notifications += 1
        if payload in self._jobs:
            self._mark(payload)
