"""The JobContext a pipeline gets: a claimed lease, progress-based heartbeats, fenced writes that ride out
database blips, waits that stop for a cancel, a shutdown or a stall (docs/architecture.md, "Lifecycle")."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from app.db import retry_transient, run_statement, session_scope
from app.queue import enqueue
from app.services import artifacts as artifacts_service
from app.services import transitions
from app.services.transitions import Claim, LeaseLost
from app.settings import Settings
from workers.errors import JobCancelled, Preempted

log = logging.getLogger("tuneq.worker")
T = TypeVar("T")

WAIT_POLL_SECONDS = 0.25  # how often a wait on a remote result looks at cancel, shutdown and the lease
# A pool child whose pipeline ignores the hand-back of its stalled job for this long is replaced.
ABANDON_GRACE_SECONDS = 30.0

# Set in a worker process when its worker shuts down (SIGTERM): pipelines checkpoint and hand back.
DRAINING = threading.Event()
_IN_POOL_CHILD = False


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def enter_pool_child() -> None:
    """Called in each Celery pool process: the parent signals SIGUSR2 when the worker shuts down."""
    global _IN_POOL_CHILD
    _IN_POOL_CHILD = True
    DRAINING.clear()
    signal.signal(signal.SIGUSR2, _drain)


def _drain(*_: object) -> None:
    DRAINING.set()


@contextmanager
def _draining_on_sigterm() -> Iterator[None]:
    """While a job runs in a pool process, SIGTERM drains it as SIGUSR2 does (a SIGTERM sent to the whole
    process group: systemd's default, `kill -TERM -PGID`); a second one kills. Installed per job because the
    pool resets its children's handlers after start-up; restored after, so the pool can stop idle children."""
    if not _IN_POOL_CHILD or threading.current_thread() is not threading.main_thread():
        yield
        return

    def drain_then_default(*_: object) -> None:
        DRAINING.set()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    before_term = signal.signal(signal.SIGTERM, drain_then_default)
    signal.signal(signal.SIGUSR2, _drain)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before_term)


def _done(future: Any) -> bool:
    """Whether a future (concurrent, or the tinker SDK's, which wraps one) has completed."""
    inner = future.future() if hasattr(future, "future") else future
    return bool(inner.done())


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
                    try:
                        ctx.beat()
                    except Exception:  # this thread must outlive any one job's trouble
                        log.exception("job %s: heartbeat crashed", ctx.job_id, extra=ctx.log_context)
                if ctx.abandoned_at is not None and now - ctx.abandoned_at > ABANDON_GRACE_SECONDS and _IN_POOL_CHILD:
                    # The pipeline is stuck in a call that never returns and cannot be interrupted; its job
                    # runs elsewhere already. Free this slot: Celery replaces a pool process that exits.
                    log.critical("job %s: pipeline still stuck %.0f s after its job was handed back; "
                                 "exiting this pool process", ctx.job_id, now - ctx.abandoned_at, extra=ctx.log_context)
                    logging.shutdown()
                    os._exit(75)
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
    """Everything a pipeline may do to its job. Every write carries the lease token and counts as progress;
    a job that makes none for its stall limit stops being renewed and is handed back as stalled."""

    def __init__(self, claim: Claim, settings: Settings) -> None:
        self.claim = claim
        self.settings = settings
        self.job_id, self.attempt, self.token = claim.job_id, claim.attempt, claim.token
        self.team_id = claim.team_id
        self.cancel_requested = threading.Event()
        self.lease_lost = threading.Event()
        self._started = time.monotonic()
        self.last_progress = self._started
        self.stall_seconds = claim.stall_seconds or settings.stall_limit(claim.kind)
        self.waiting_on: str | None = None  # what the pipeline waits for now (named in a `stalled` event)
        self.abandoned_at: float | None = None
        self.next_beat = self._started + settings.heartbeat_seconds
        self.beat_lock = threading.Lock()
        self.beating = True

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> JobContext:
        self._signals = _draining_on_sigterm()
        self._signals.__enter__()
        HEARTBEATS.add(self)
        return self

    def __exit__(self, *_: object) -> None:
        HEARTBEATS.remove(self)
        self._signals.__exit__(None, None, None)

    def beat(self) -> None:
        """Renew the lease (called by HEARTBEATS) while the pipeline makes progress; notes a cancel request
        or a lost lease for `check()`. A stalled pipeline is not kept alive: its job is handed back."""
        with self.beat_lock:
            self.next_beat = time.monotonic() + self.settings.heartbeat_seconds  # also when not beating: no spin
            if not self.beating:
                return
            idle = time.monotonic() - self.last_progress
            try:
                if idle > self.stall_seconds:
                    self._hand_back_stalled(idle)
                elif run_statement(lambda db: transitions.heartbeat(db, self.job_id, self.token)):
                    self.cancel_requested.set()
            except LeaseLost:
                log.warning("job %s: lease lost (another worker took over); stopping", self.job_id,
                            extra=self.log_context)
                self._stop_beating()
            except Exception as exc:
                log.warning("job %s: heartbeat failed (%s); will retry", self.job_id, type(exc).__name__,
                            extra=self.log_context)

    def _hand_back_stalled(self, idle: float) -> None:
        waiting_on = self.waiting_on or f"the {self.claim.kind} pipeline's next step"
        log.warning("job %s: no progress for %.0f s (waiting on %s); handing it back", self.job_id, idle, waiting_on,
                    extra=self.log_context)
        details = {"waiting_on": waiting_on, "seconds_without_progress": round(idle, 1),
                   "stall_limit_seconds": self.stall_seconds}
        requeued = run_statement(lambda db: transitions.hand_back(
            db, self.job_id, self.token, reason="stalled", max_preemptions=self.settings.max_preemptions,
            details=details))
        self._stop_beating()
        if requeued:
            enqueue(self.job_id, self.claim.kind, resumed=True)

    def _stop_beating(self) -> None:
        self.lease_lost.set()
        self.beating = False
        self.abandoned_at = time.monotonic()

    @property
    def log_context(self) -> dict[str, Any]:
        """The job's log fields, for lines written from the shared heartbeat thread (it serves every job of
        this process, so it has no job bound)."""
        return {"job_id": self.job_id, "attempt": self.claim.attempt, "team": self.claim.team_id,
                "kind": self.claim.kind}

    # -- what pipelines call -------------------------------------------------------------------
    @property
    def progress_interval(self) -> float:
        """How often slow honest work (a long validation, a download) should report progress, so that it is
        never taken for a stall."""
        return min(5.0, self.stall_seconds / 4)

    @property
    def stop_requested(self) -> bool:
        """True when the pipeline should save what it can and stop: cancel, shutdown, or the lease is gone."""
        return self.cancel_requested.is_set() or DRAINING.is_set() or self.lease_lost.is_set()

    def check(self) -> None:
        """Call between steps: stops at once if the lease is gone; raises JobCancelled if asked to, or
        Preempted when the worker is shutting down."""
        if self.lease_lost.is_set():
            raise LeaseLost(self.job_id)
        if self.cancel_requested.is_set():
            raise JobCancelled()
        if DRAINING.is_set():
            raise Preempted("shutdown", "the worker is shutting down")

    def wait(self, future: Any, what: str) -> Any:
        """The result of a remote call's future. While it runs, a lost lease stops the wait at once; a cancel
        lets the call finish for up to one heartbeat, a shutdown for most of the shutdown grace (so a step can
        end and be checkpointed), then the wait stops. A future that never resolves is therefore bounded by
        the stall limit."""
        self.waiting_on = what
        stop_by: float | None = None
        try:
            while True:
                try:
                    return future.result(timeout=WAIT_POLL_SECONDS)
                except FutureTimeout:
                    if _done(future):  # it failed with a TimeoutError of its own: that is its result
                        raise
                    if self.lease_lost.is_set():
                        raise LeaseLost(self.job_id) from None
                    if self.stop_requested:
                        stop_by = stop_by or time.monotonic() + self._stop_patience()
                        if time.monotonic() >= stop_by:
                            self.check()
        finally:
            self.waiting_on = None

    def _stop_patience(self) -> float:
        heartbeat = self.settings.heartbeat_seconds
        if self.cancel_requested.is_set() or not DRAINING.is_set():
            return heartbeat
        return max(heartbeat, self.settings.shutdown_grace_seconds - 2 * heartbeat)

    def write(self, work: Callable[[Session], T] | None = None, values: dict[str, Any] | None = None,
              events: list[tuple[str, dict[str, Any]]] | None = None) -> T | None:
        """One transaction that first proves (and renews) the lease, writes `values` and `events`, then runs
        `work(session)`. Transient database errors are retried (the whole transaction) for
        TUNEQ_DB_RETRY_SECONDS; after that DatabaseUnavailable leaves the job to its lease."""

        def attempt() -> T | None:
            if self.lease_lost.is_set():
                raise LeaseLost(self.job_id)
            with session_scope() as session:
                if transitions.fenced_update(session, self.job_id, self.token, values or {}, events):
                    self.cancel_requested.set()
                return work(session) if work is not None else None

        try:
            done = retry_transient(attempt, seconds=self.settings.db_retry_seconds, what=f"job {self.job_id}")
        except LeaseLost:
            self.lease_lost.set()
            raise
        self.last_progress = time.monotonic()
        return done

    def read(self, work: Callable[[Session], T]) -> T:
        """A read-only transaction, retried like `write`."""

        def attempt() -> T:
            with session_scope() as session:
                return work(session)

        return retry_transient(attempt, seconds=self.settings.db_retry_seconds, what=f"job {self.job_id}")

    def update(self, values: dict[str, Any], events: list[tuple[str, dict[str, Any]]] | None = None) -> None:
        """A fenced write of job columns (progress, result) and events."""
        self.write(None, values, events)

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

    # -- artifacts -----------------------------------------------------------------------------
    def artifact_writer(self, name: str) -> artifacts_service.AtomicWriter:
        """A writer for an output file of this attempt: its own folder per lease, so a paused old attempt can
        never overwrite what the winning one registered."""
        return artifacts_service.AtomicWriter(artifacts_service.attempt_path(self.team_id, self.job_id, self.token,
                                                                             name))

    def publish_artifacts(self, outputs: list[dict[str, Any]]) -> list[str]:
        """Register committed files as this job's artifacts in the fenced transaction, replacing any from an
        earlier attempt; then remove earlier attempts' folders."""

        def register(session: Session) -> list[str]:
            artifacts_service.forget_job_artifacts(session, self.job_id)
            return [
                artifacts_service.register(session, team_id=self.team_id, job_id=self.job_id, kind=o["kind"],
                                           name=o["name"], writer=o["writer"], fmt=o["fmt"], rows=o["rows"],
                                           meta=o["meta"])
                for o in outputs
            ]

        ids = self.write(register)
        assert ids is not None
        artifacts_service.remove_other_attempts(self.team_id, self.job_id, self.token)
        return ids
