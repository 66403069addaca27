"""The JobContext a pipeline gets: a claimed lease, heartbeats, fenced writes, cancellation checks."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.orm import Session

from app.db import run_statement, session_scope
from app.services import artifacts as artifacts_service
from app.services import transitions
from app.services.transitions import Claim, LeaseLost
from app.settings import Settings
from workers.errors import JobCancelled

log = logging.getLogger("tuneq.worker")


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeats:
    """One thread per process renews the leases of every job running in it, each on its own schedule.

    A thread per job would cost a start and a join even for jobs that end within a heartbeat, which is
    most of the wall time of a short job (bench/dispatch.py). Threads do not survive fork, so a forked
    child starts its own on its first job.
    """

    def __init__(self) -> None:
        self._jobs: set[JobContext] = set()
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, ctx: JobContext) -> None:
        with self._lock:
            self._jobs.add(ctx)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)
                self._thread.start()
        self._changed.set()  # the new job may be due before the thread's current wake-up

    def remove(self, ctx: JobContext) -> None:
        with ctx.beat_lock:  # waits for a beat in flight: none starts after this
            ctx.beating = False
        with self._lock:
            self._jobs.discard(ctx)

    def _run(self) -> None:
        while True:
            with self._lock:
                jobs = list(self._jobs)
            now = time.monotonic()
            for ctx in jobs:
                if ctx.next_beat <= now:
                    ctx.beat()
            with self._lock:
                due = min((ctx.next_beat for ctx in self._jobs), default=None)
            self._changed.wait(None if due is None else max(0.0, due - time.monotonic()))
            self._changed.clear()


HEARTBEATS = Heartbeats()


def _after_fork_in_child() -> None:
    global HEARTBEATS
    HEARTBEATS = Heartbeats()


os.register_at_fork(after_in_child=_after_fork_in_child)


class JobContext:
    """Everything a pipeline may do to its job. Every write carries the lease token."""

    def __init__(self, claim: Claim, settings: Settings) -> None:
        self.claim = claim
        self.settings = settings
        self.job_id, self.attempt, self.token = claim.job_id, claim.attempt, claim.token
        self.team_id = claim.team_id
        self.cancel_requested = threading.Event()
        self.lease_lost = threading.Event()
        self._started = time.monotonic()
        self.next_beat = self._started + settings.heartbeat_seconds
        self.beat_lock = threading.Lock()
        self.beating = True

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> JobContext:
        HEARTBEATS.add(self)
        return self

    def __exit__(self, *_: object) -> None:
        HEARTBEATS.remove(self)

    def beat(self) -> None:
        """Renew the lease (called by HEARTBEATS); notes a cancel request or a lost lease for `check()`."""
        with self.beat_lock:
            if not self.beating:
                return
            self.next_beat = time.monotonic() + self.settings.heartbeat_seconds
            try:
                if run_statement(lambda db: transitions.heartbeat(db, self.job_id, self.token)):
                    self.cancel_requested.set()
            except LeaseLost:
                log.warning("job %s: lease lost (another worker took over); stopping", self.job_id)
                self.lease_lost.set()
                self.beating = False
            except Exception:
                log.exception("job %s: heartbeat failed; will retry", self.job_id)

    # -- what pipelines call -------------------------------------------------------------------
    def check(self) -> None:
        """Call between steps: stops at once if the lease is gone, raises JobCancelled if asked to."""
        if self.lease_lost.is_set():
            raise LeaseLost(self.job_id)
        if self.cancel_requested.is_set():
            raise JobCancelled()

    def update(self, values: dict[str, Any], events: list[tuple[str, dict[str, Any]]] | None = None) -> None:
        """A fenced write of job columns (progress, result) and events."""
        with self.fenced(values, events):
            pass

    def progress(self, done: int, total: int | None, unit: str, *, event: bool = False,
                 extra: dict[str, Any] | None = None) -> None:
        """Record progress with an ETA; `event=True` also appends a progress event (a milestone)."""
        elapsed = time.monotonic() - self._started
        eta = round(elapsed / done * (total - done), 1) if total and done else None
        progress = {"done": done, "total": total, "unit": unit, "eta_seconds": eta, **(extra or {})}
        self.update({"progress": progress}, [("progress", progress)] if event else None)
        self.check()

    def event(self, type_: str, data: dict[str, Any]) -> None:
        self.update({}, [(type_, data)])

    @contextmanager
    def fenced(self, values: dict[str, Any] | None = None,
               events: list[tuple[str, dict[str, Any]]] | None = None) -> Iterator[Session]:
        """A transaction that first proves (and renews) the lease; other writes may join it."""
        if self.lease_lost.is_set():
            raise LeaseLost(self.job_id)
        with session_scope() as session:
            if transitions.fenced_update(session, self.job_id, self.token, values or {}, events):
                self.cancel_requested.set()
            yield session

    def publish_artifacts(self, outputs: list[dict[str, Any]]) -> list[str]:
        """Register committed files as this job's artifacts, replacing any from an earlier attempt."""
        with self.fenced() as session:
            artifacts_service.forget_job_artifacts(session, self.job_id)
            return [
                artifacts_service.register(session, team_id=self.team_id, job_id=self.job_id, kind=o["kind"],
                                           name=o["name"], writer=o["writer"], fmt=o["fmt"], rows=o["rows"],
                                           meta=o["meta"])
                for o in outputs
            ]
