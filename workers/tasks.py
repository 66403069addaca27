"""Thin tasks: claim the job, run its pipeline, record how it ended (DESIGN.md §2)."""

from __future__ import annotations

import logging
from typing import Any

from app.db import run_statement, session_scope
from app.queue import RUN_JOB, enqueue
from app.services import transitions
from app.services.transitions import LeaseLost, error_body
from app.settings import get_settings
from workers.celery_app import celery
from workers.errors import JobCancelled, JobFailed, RetryJob
from workers.lease import JobContext, worker_identity
from workers.pipelines import PIPELINES

log = logging.getLogger("tuneq.worker")


@celery.task(name=RUN_JOB, ignore_result=True)
def run_job(job_id: str) -> None:
    drive(job_id)


def drive(job_id: str) -> None:
    """Run job `job_id` if we can claim it; a message for a job someone else owns is just acked."""
    settings = get_settings()
    claim = run_statement(lambda db: transitions.claim(db, job_id, owner=worker_identity(),
                                                       lease_seconds=settings.lease_seconds))
    if claim is None:
        log.info("job %s: not claimable (already taken, finished or cancelled); ignoring wake-up", job_id)
        return
    log.info("job %s: claimed (kind=%s attempt=%d)", job_id, claim.kind, claim.attempt)
    with JobContext(claim, settings) as ctx:
        try:
            _run(ctx)
        except LeaseLost:
            log.warning("job %s: lease lost; this worker stops without further writes", job_id)


def _run(ctx: JobContext) -> None:
    kind = ctx.claim.kind
    try:
        pipeline = PIPELINES.get(kind)
        if pipeline is None:
            raise JobFailed("unknown_kind", f"No worker pipeline handles jobs of kind '{kind}'.", user_error=False)
        ctx.check()
        result = pipeline(ctx.claim.spec, ctx)
        _finish(ctx, "succeeded", result=result)
    except JobCancelled:
        _finish(ctx, "cancelled")
    except JobFailed as exc:
        _finish(ctx, "failed", error=error_body(exc.code, exc.message, user_error=exc.user_error,
                                               details=exc.details))
    except RetryJob as exc:
        err = error_body(exc.code, exc.message, user_error=False)
        with session_scope() as session:
            again = transitions.retry_later(session, ctx.job_id, ctx.token, err)
        if again:
            enqueue(ctx.job_id, kind)
    except LeaseLost:
        raise
    except Exception as exc:
        log.exception("job %s: pipeline crashed", ctx.job_id)
        _finish(ctx, "failed", error=error_body(
            "internal_error", f"The {kind} job stopped on an unexpected error ({type(exc).__name__}: {exc}). "
            "This is a bug on our side; the worker log has the details.", user_error=False))


def _finish(ctx: JobContext, status: str, *, result: dict[str, Any] | None = None,
            error: dict[str, Any] | None = None) -> None:
    """Record the end, then queue the jobs that were waiting on this one (the reaper also would)."""
    waited_on = run_statement(lambda db: transitions.finish(db, ctx.job_id, ctx.token, status, result=result,
                                                            error=error))
    log.info("job %s: %s", ctx.job_id, status)
    if waited_on:
        with session_scope() as session:
            released = transitions.release_pending(session, ctx.team_id)
        for job_id, kind in released:
            enqueue(job_id, kind)
