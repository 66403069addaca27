"""Thin tasks: claim the job, run its pipeline, record how it ended (docs/architecture.md, "Lifecycle").

How a run ends decides what is recorded: the job's own failure spends an attempt; the infrastructure's
(shutdown, a database that went away) is a preemption that hands the job back; a database that stays away
leaves the job to its lease, and the reaper recovers it. Nothing here records `failed` for an outage.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable
from typing import Any

from app.db import DatabaseUnavailable, is_transient, retry_transient, run_statement, session_scope
from app.errors import TuneqError
from app.logs import bind_job, clear_context
from app.queue import RUN_JOB, enqueue
from app.services import dependencies, transitions
from app.services.transitions import LeaseLost, error_body
from app.settings import get_settings
from workers.celery_app import celery
from workers.clients import tinker as tinker_client
from workers.errors import JobCancelled, JobFailed, Preempted, RetryJob
from workers.lease import JobContext, worker_identity
from workers.pipelines import PIPELINES

log = logging.getLogger("tuneq.worker")


@celery.task(name=RUN_JOB, ignore_result=True)
def run_job(job_id: str) -> None:
    drive(job_id)


def drive(job_id: str) -> None:
    """Run job `job_id` if we can claim it; a message for a job someone else owns is just acked."""
    settings = get_settings()
    clear_context()
    bind_job(job_id=job_id)
    try:
        claim = run_statement(lambda db: transitions.claim(db, job_id, owner=worker_identity(),
                                                           lease_seconds=settings.lease_seconds))
    except Exception as exc:
        if not is_transient(exc):
            raise
        log.warning("job %s: database unavailable at claim (%s); the reaper sends the wake-up again",
                    job_id, type(exc).__name__)
        return
    if claim is None:
        log.info("job %s: not claimable (already taken, finished, cancelled, not due, or over its team's running "
                 "cap, TUNEQ_MAX_RUNNING_PER_TEAM); ignoring wake-up", job_id)
        return
    bind_job(job_id=job_id, attempt=claim.attempt, team=claim.team_id, kind=claim.kind)
    try:
        log.info("job %s: claimed (kind=%s attempt=%d preemptions=%d)", job_id, claim.kind, claim.attempt,
                 claim.preemptions)
        with JobContext(claim, settings) as ctx:
            try:
                _record(ctx, _run(ctx))
            except LeaseLost:
                log.warning("job %s: lease lost; this worker stops without further writes", job_id)
            except DatabaseUnavailable:
                log.error("job %s: the database stayed unreachable; leaving the job to its lease (the reaper "
                          "resumes it once the database is back)", job_id)
    finally:
        clear_context()  # the pool process's next task is about another job


Outcome = Callable[[Any], Any]  # given a connection, records how the run ended; returns wake-ups to send


def _run(ctx: JobContext) -> Outcome:
    """Run the pipeline; return how to record its end (recording is retried separately)."""
    kind = ctx.claim.kind
    try:
        pipeline = PIPELINES.get(kind)
        if pipeline is None:
            raise JobFailed("unknown_kind", f"No worker pipeline handles jobs of kind '{kind}'.", user_error=False)
        ctx.check()
        result = pipeline(ctx.claim.spec, ctx)
        return _finished(ctx, "succeeded", result=result)
    except JobCancelled:
        return _finished(ctx, "cancelled")
    except JobFailed as exc:
        return _finished(ctx, "failed", error=error_body(exc.code, exc.message, user_error=exc.user_error,
                                                         details=exc.details))
    except RetryJob as exc:
        return _retry(ctx, error_body(exc.code, exc.message, user_error=False))
    except TuneqError as exc:
        if exc.status < 500:  # a service refused the spec at run time (e.g. a checkpoint that is not the team's)
            return _finished(ctx, "failed", error=error_body(exc.code, exc.detail, user_error=True))
        return _hand_back(ctx, exc.code, {"message": exc.detail})  # the service's own trouble: a preemption
    except Preempted as exc:
        log.info("job %s: preempted (%s); handing it back", ctx.job_id, exc.reason)
        return _hand_back(ctx, exc.reason, {"message": exc.message})
    except (LeaseLost, DatabaseUnavailable):
        raise
    except Exception as exc:
        if is_transient(exc):  # a read outside ctx.write met a database blip: not the job's fault
            log.warning("job %s: database error mid-run (%s); handing it back", ctx.job_id, type(exc).__name__)
            return _hand_back(ctx, "database_unavailable", {})
        if tinker_client.from_tinker(exc):  # a Tinker call outside result_of (e.g. opening the client)
            log.warning("job %s: Tinker call failed (%s)", ctx.job_id, type(exc).__name__)
            ended = tinker_client.job_error(exc, "a call", ctx.job_id)
            if isinstance(ended, RetryJob):
                return _retry(ctx, error_body(ended.code, ended.message, user_error=False))
            return _finished(ctx, "failed", error=error_body(ended.code, ended.message, user_error=ended.user_error,
                                                             details=ended.details))
        # Messages never carry the exception text (it may hold SQL, parameters or server paths): the log
        # does, under a reference the user can quote.
        ref = uuid.uuid4().hex[:12]
        log.exception("job %s: pipeline crashed [ref %s]", ctx.job_id, ref)
        return _finished(ctx, "failed", error=error_body(
            "internal_error", f"The {kind} job stopped on an unexpected error ({type(exc).__name__}). This is a "
            f"bug on our side; the worker log has the details under reference {ref}.", user_error=False,
            details={"reference": ref}))


def _record(ctx: JobContext, outcome: Outcome) -> None:
    """Record the end, retrying through database blips, then send the wake-ups it implies."""
    def attempt() -> Any:
        with session_scope() as session:
            return outcome(session)

    wakeups = retry_transient(attempt, seconds=ctx.settings.db_retry_seconds, what=f"job {ctx.job_id}")
    for job_id, kind, resumed in wakeups:
        enqueue(job_id, kind, resumed=resumed)


def _finished(ctx: JobContext, status: str, *, result: dict[str, Any] | None = None,
              error: dict[str, Any] | None = None) -> Outcome:
    def record(db: Any) -> list[transitions.Wakeup]:
        waited_on = transitions.finish(db, ctx.job_id, ctx.token, status, result=result, error=error)
        log.info("job %s: %s", ctx.job_id, status)
        # Queue the jobs that were waiting on this one (the reaper also would).
        return dependencies.release_dependents(db, ctx.job_id) if waited_on else []
    return record


def _retry(ctx: JobContext, error: dict[str, Any]) -> Outcome:
    settings = ctx.settings
    delay = min(settings.retry_max_seconds, settings.retry_base_seconds * 2 ** max(0, ctx.attempt - 1))
    delay *= random.uniform(0.75, 1.25)  # jitter: jobs that failed together do not retry together

    def record(db: Any) -> list[transitions.Wakeup]:
        transitions.retry_later(db, ctx.job_id, ctx.token, error, delay_seconds=delay)
        return []  # the reaper sends the wake-up when `not_before` is due
    return record


def _hand_back(ctx: JobContext, reason: str, details: dict[str, Any]) -> Outcome:
    def record(db: Any) -> list[transitions.Wakeup]:
        again = transitions.hand_back(db, ctx.job_id, ctx.token, reason=reason,
                                      max_preemptions=ctx.settings.max_preemptions, details=details)
        return [(ctx.job_id, ctx.claim.kind, True)] if again else []
    return record
