"""A watch of one job (an SSE stream or a `/wait`): its slot under the key's cap, its subscription to the
process's event hub, its replay from SQL, and the periodic re-check of its API key (docs/architecture.md,
"Watching a job")."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import select

from app.db import DatabaseUnavailable, is_transient, read_in_sql_thread, session_scope
from app.errors import TuneqError, Unauthorized
from app.models import TERMINAL_STATUSES, Job
from app.services import auth as auth_service
from app.services import jobs as jobs_service
from app.services.auth import Caller, KeyCache
from app.services.event_hub import EventHub, Subscriber

log = logging.getLogger("tuneq.events")

PAGE = 1000  # events per replay read
POLL_SECONDS = 0.2  # only when the hub is not running (an app served without its lifespan)
STREAM_RETRY_SECONDS = 1.0  # a replay read's next try while the database is away


_key_checks: dict[str, asyncio.Task[bool]] = {}  # a key's SQL re-check in flight, shared by its watches


def _forget_check(token: str, _task: object) -> None:
    _key_checks.pop(token, None)


class TooManyWatches(TuneqError):
    status, code, title = 429, "too_many_streams", "Too many open streams"
    retry_after = 5


class WatchLimits:
    """Open streams and waits per API key in this process."""

    def __init__(self, per_key: int) -> None:
        self.per_key = per_key
        self.open: dict[str, int] = {}

    def acquire(self, key_id: str) -> None:
        count = self.open.get(key_id, 0)
        if count >= self.per_key:
            raise TooManyWatches(
                f"This API key already has {count} open event streams and waits (at most {self.per_key} per key, "
                "TUNEQ_MAX_STREAMS_PER_KEY); close one, or retry after the Retry-After seconds.")
        self.open[key_id] = count + 1

    def release(self, key_id: str) -> None:
        count = self.open.get(key_id, 0) - 1
        if count > 0:
            self.open[key_id] = count
        else:
            self.open.pop(key_id, None)


Replay = tuple[list[dict[str, Any]], bool, bool, int]


def _replay(team_id: str, job_id: str, after: int, limit: int) -> Replay:
    """(events after `after`, more to read, job ended, the job's last seq). The job row is read first, so the
    events read next include its terminal event when it had ended, and every event up to that seq."""
    with session_scope() as session:
        row = session.execute(select(Job.status, Job.event_seq).where(Job.id == job_id, Job.team_id == team_id)).first()
        events, has_more = jobs_service.list_events(session, team_id=team_id, job_id=job_id, after=after, limit=limit)
        assert row is not None  # list_events raised NotFound otherwise
        return events, has_more, row.status in TERMINAL_STATUSES, int(row.event_seq)


def _job_and_seq(team_id: str, job_id: str) -> tuple[dict[str, Any], int]:
    with session_scope() as session:
        job = jobs_service.get(session, team_id=team_id, job_id=job_id)
        seq = session.execute(select(Job.event_seq).where(Job.id == job_id)).scalar_one()
        return job, int(seq)


def _job(team_id: str, job_id: str) -> dict[str, Any]:
    with session_scope() as session:
        return jobs_service.get(session, team_id=team_id, job_id=job_id)


def _lookup(cache: KeyCache, token: str) -> Caller:
    with session_scope() as session:
        return auth_service.lookup_caller(session, cache, token)


class Watch:
    """Open it before the first read (it registers with the hub), close it when done (idempotent)."""

    def __init__(self, hub: EventHub, limits: WatchLimits, cache: KeyCache, token: str, caller: Caller,
                 job_id: str) -> None:
        self.hub, self.limits, self.cache, self.token = hub, limits, cache, token
        self.caller, self.job_id = caller, job_id
        self.recheck_seconds = max(0.05, cache.ttl / 2)
        self.sub: Subscriber | None = None
        self.revoked = False

    def open(self) -> None:
        self.limits.acquire(self.caller.key_id)
        self.sub = self.hub.subscribe(self.job_id)

    def close(self) -> None:
        if self.sub is not None:
            self.hub.unsubscribe(self.sub)
            self.limits.release(self.caller.key_id)
            self.sub = None

    async def first_page(self, after: int) -> Replay:
        """The replay's first read; NotFound (and a database outage) propagate, before any response."""
        return await read_in_sql_thread(_replay, self.caller.team_id, self.job_id, after, PAGE)

    async def key_valid(self) -> bool:
        """The key as the cache (or SQL, once per cache window and key) sees it now. While the database is
        away the key is taken as still valid: the check runs again at the next window. The watches of one key
        share one SQL lookup when the cache entry expires (not one each, all at the same moment)."""
        hit, caller = auth_service.cached_caller(self.cache, self.token)
        if hit:
            return caller is not None
        task = _key_checks.get(self.token)
        if task is None:
            task = asyncio.ensure_future(self._look_up_key())
            _key_checks[self.token] = task
            task.add_done_callback(functools.partial(_forget_check, self.token))
        return await asyncio.shield(task)

    async def _look_up_key(self) -> bool:
        try:
            await read_in_sql_thread(_lookup, self.cache, self.token)
            return True
        except Unauthorized:
            return False
        except Exception as exc:
            if is_transient(exc) or isinstance(exc, DatabaseUnavailable):
                return True
            raise

    async def _idle(self, seconds: float | None) -> bool:
        """Wait for the hub to bring something (or for its tick, or at most `seconds`); whether it did."""
        sub = self.sub
        assert sub is not None
        if not sub.wake.is_set():
            if seconds is None:  # the hub's tick bounds the wait
                await sub.wake.wait()
            else:
                try:
                    async with asyncio.timeout(seconds):  # no extra task, unlike wait_for on Python 3.11
                        await sub.wake.wait()
                except TimeoutError:
                    return False
        if sub.batches or sub.resync:
            return True
        sub.wake.clear()  # a tick
        return False

    async def follow(self, start: int, first: Replay) -> AsyncIterator[dict[str, Any] | None]:
        """Every event after `start`, each once and in order, until the job's terminal event (or its key is
        revoked: then `revoked` is set). Keeps going through a database outage from the last event sent.
        Yields None at the hub's idle ticks (event_hub.TICK_SECONDS), for pings and shutdown checks."""
        assert self.sub is not None
        last = start
        pending, need_read, ended, seen = first
        caught_up = False
        next_check = time.monotonic() + self.recheck_seconds
        while True:
            if not caught_up and not need_read and not ended:  # the replay is whole: the hub takes over
                caught_up = True
                # The hub delivers what comes after its cursor; if it read past our replay, read the gap.
                need_read = self.hub.caught_up(self.sub, seen) > max(seen, last, *(e["seq"] for e in pending))
            for event in pending:
                if event["seq"] <= last:
                    continue
                last = event["seq"]
                yield event
                if event["type"] in TERMINAL_STATUSES:  # a terminal event is named after its status
                    return
            pending = []
            if need_read:
                try:
                    pending, need_read, ended, seen = await read_in_sql_thread(
                        _replay, self.caller.team_id, self.job_id, last, PAGE)
                except Exception as exc:
                    if not (is_transient(exc) or isinstance(exc, DatabaseUnavailable)):
                        raise
                    log.warning("event stream of %s: database unreachable (%s); waiting", self.job_id,
                                type(exc).__name__)
                    await asyncio.sleep(STREAM_RETRY_SECONDS)
                continue
            if ended:  # the job had ended and every event after `last` has been sent
                return
            if self.sub.resync:  # fell behind: what was dropped is in SQL
                self.sub.resync = False
                self.sub.take()
                need_read = True
                continue
            if self.sub.batches:
                pending = self.sub.take()
                continue
            if not self.hub.running:
                await asyncio.sleep(POLL_SECONDS)
                need_read = True
            elif not await self._idle(None):
                yield None
            if time.monotonic() >= next_check:
                if not await self.key_valid():
                    self.revoked = True
                    return
                next_check = time.monotonic() + self.recheck_seconds

    async def wait(self, timeout: float) -> dict[str, Any]:
        """The job once it has ended, or as it is after `timeout` seconds. Unauthorized when the key is revoked
        meanwhile."""
        assert self.sub is not None
        deadline = time.monotonic() + timeout
        job, seq = await read_in_sql_thread(_job_and_seq, self.caller.team_id, self.job_id)
        if jobs_service.is_terminal(job):
            return job
        look = self.hub.caught_up(self.sub, seq) > seq  # the hub is past our read: look at the job again
        next_check = time.monotonic() + self.recheck_seconds
        while True:
            now = time.monotonic()
            if now >= deadline:
                return await read_in_sql_thread(_job, self.caller.team_id, self.job_id)
            if not look:
                if self.hub.running:
                    await self._idle(max(0.0, min(deadline, next_check) - now))
                else:
                    await asyncio.sleep(min(POLL_SECONDS, max(0.0, deadline - now)))
                    look = True
                if self.sub.resync or any(e["type"] in TERMINAL_STATUSES for e in self.sub.take()):
                    self.sub.resync = False
                    look = True
            if look:
                look = False
                job = await read_in_sql_thread(_job, self.caller.team_id, self.job_id)
                if jobs_service.is_terminal(job):
                    return job
            if time.monotonic() >= next_check:
                if not await self.key_valid():
                    raise Unauthorized("This API key was revoked while waiting.")
                next_check = time.monotonic() + self.recheck_seconds
