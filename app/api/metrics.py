"""GET /metrics for Prometheus: the work waiting and running, read from SQL at scrape time.

The job rows are the truth for every API and worker process alike, so any API process answers for the whole
service, workers on other machines included (no per-process counters to merge). Aggregates only (by kind and
status, never by team or job). Counts that exist only in a process (HTTP request durations) come from
app/telemetry.py, summed over this machine's API processes in multiprocess mode.

Access: with `TUNEQ_METRICS_TOKEN` set, a scrape sends `Authorization: Bearer <token>` (compared in constant
time; anything else is a 401). Unset, /metrics answers only clients on loopback (what `make run` and a sidecar
Prometheus use) and is a 404 for everyone else.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session
from starlette.responses import Response

from app.api.deps import SettingsDep
from app.api.responses import problem
from app.db import in_sql_thread, session_scope
from app.models import GenerationItem, Job, utcnow
from app.services import job_reads
from app.telemetry import process_registry

router = APIRouter(tags=["health"])

OPEN_STATUSES = ("pending", "queued", "running")


class JobsCollector(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("tuneq_jobs", "Jobs not finished yet, by kind and status.",
                                 labels=["kind", "status"])
        oldest = GaugeMetricFamily("tuneq_oldest_queued_job_seconds",
                                   "Age of the oldest queued job, by kind: growing means no worker takes them.",
                                   labels=["kind"])
        # One series per kind, not per job: job ids as labels would make a new series for every job.
        silent = GaugeMetricFamily(
            "tuneq_job_seconds_since_progress",
            "Longest time any running job of this kind has gone without reporting progress (the maximum over "
            "its running jobs, on the database's clock; not labelled per job, which would grow a series per "
            "job). Nearing the kind's stall limit means a job is about to be preempted as stalled.",
            labels=["kind"])
        now = utcnow()
        with session_scope() as session:
            counts = session.execute(select(Job.kind, Job.status, func.count()).where(Job.status.in_(OPEN_STATUSES))
                                     .group_by(Job.kind, Job.status)).all()
            ages = session.execute(select(Job.kind, func.min(Job.created_at)).where(Job.status == "queued")
                                   .group_by(Job.kind)).all()
            running = job_reads.seconds_since_progress(session)
        for kind, status, count in counts:
            jobs.add_metric([kind, status], count)
        for kind, created in ages:
            oldest.add_metric([kind], max(0.0, (now - created).total_seconds()))
        longest: dict[str, float] = {}
        for _, kind, seconds in running:
            longest[kind] = max(seconds, longest.get(kind, 0.0))
        for kind, seconds in sorted(longest.items()):
            silent.add_metric([kind], seconds)
        yield jobs
        yield oldest
        yield silent


# Seconds: queue waits of a few seconds up to runs of a day.
DURATION_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)
FINISHED = ("succeeded", "failed", "cancelled")


def _seconds(session: Session, start: ColumnElement[Any] | InstrumentedAttribute[Any],
             end: ColumnElement[Any] | InstrumentedAttribute[Any]) -> ColumnElement[Any]:
    if session.get_bind().dialect.name == "postgresql":
        return func.extract("epoch", end - start)
    return (func.julianday(end) - func.julianday(start)) * 86400.0


def _histogram(session: Session, family: HistogramMetricFamily, seconds: ColumnElement, *where: ColumnElement) -> None:
    """One histogram series per kind, bucketed by the database in one pass over the rows."""
    buckets = [func.sum(case((seconds <= bound, 1), else_=0)) for bound in DURATION_BUCKETS]
    rows = session.execute(select(Job.kind, func.count(), func.sum(seconds), *buckets).where(*where)
                           .group_by(Job.kind)).all()
    for kind, count, total, *below in rows:
        cumulative = [(str(bound), float(n or 0)) for bound, n in zip(DURATION_BUCKETS, below, strict=True)]
        family.add_metric([kind], [*cumulative, ("+Inf", float(count))], max(0.0, float(total or 0.0)))


class JobHistoryCollector(Collector):
    """Counters and histograms over every job row kept (rows deleted by retention leave the sums, which
    Prometheus reads as a counter reset)."""

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        finished = CounterMetricFamily("tuneq_jobs_finished", "Jobs that ended, by kind and final status.",
                                       labels=["kind", "status"])
        wait = HistogramMetricFamily(
            "tuneq_job_queue_wait_seconds", "Time a started job waited in its queue: from when it was last sent "
            "to a worker (or submitted) to its latest start, by kind.", labels=["kind"])
        run = HistogramMetricFamily("tuneq_job_run_seconds", "Time a finished job ran: from its latest start to "
                                    "its end, by kind.", labels=["kind"])
        preemptions = CounterMetricFamily("tuneq_job_preemptions", "Times jobs were handed back by the "
                                          "infrastructure (lost worker, shutdown, stall, database), by kind.",
                                          labels=["kind"])
        retries = CounterMetricFamily("tuneq_job_retries", "Attempts jobs spent after their first on their own "
                                      "failures, by kind.", labels=["kind"])
        calls = CounterMetricFamily("tuneq_provider_calls", "Calls generation jobs made to their chat provider "
                                    "(OpenRouter), retries included.", labels=["provider"])
        tokens = CounterMetricFamily("tuneq_provider_tokens", "Tokens the chat provider counted for generation "
                                     "jobs, by direction.", labels=["provider", "direction"])
        cost = CounterMetricFamily("tuneq_provider_cost_usd", "What generation jobs' provider calls cost, in USD.",
                                   labels=["provider"])
        with session_scope() as session:
            for kind, status, count in session.execute(
                    select(Job.kind, Job.status, func.count()).where(Job.status.in_(FINISHED))
                    .group_by(Job.kind, Job.status)).all():
                finished.add_metric([kind, status], count)
            queued_at = func.coalesce(Job.enqueued_at, Job.created_at)
            _histogram(session, wait, _seconds(session, queued_at, Job.started_at), Job.started_at.is_not(None),
                       Job.started_at >= queued_at)
            _histogram(session, run, _seconds(session, Job.started_at, Job.finished_at),
                       Job.status.in_(FINISHED), Job.started_at.is_not(None), Job.finished_at.is_not(None))
            for kind, preempted, retried in session.execute(
                    select(Job.kind, func.sum(Job.preemptions),
                           func.sum(case((Job.attempt > 1, Job.attempt - 1), else_=0))).group_by(Job.kind)).all():
                preemptions.add_metric([kind], float(preempted or 0))
                retries.add_metric([kind], float(retried or 0))
            made, prompt, completion, usd = session.execute(select(
                func.sum(GenerationItem.attempts), func.sum(GenerationItem.prompt_tokens),
                func.sum(GenerationItem.completion_tokens), func.sum(GenerationItem.cost_usd))).one()
        calls.add_metric(["openrouter"], float(made or 0))
        tokens.add_metric(["openrouter", "prompt"], float(prompt or 0))
        tokens.add_metric(["openrouter", "completion"], float(completion or 0))
        cost.add_metric(["openrouter"], float(usd or 0.0))
        yield from (finished, wait, run, preemptions, retries, calls, tokens, cost)


_registry = CollectorRegistry(auto_describe=False)
_registry.register(JobsCollector())
_registry.register(JobHistoryCollector())


def _exposition(multiproc_dir: Path | None) -> bytes:
    return generate_latest(_registry) + generate_latest(process_registry(multiproc_dir))


def _loopback(host: str | None) -> bool:
    try:
        return host is not None and ip_address(host).is_loopback
    except ValueError:
        return False


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, settings: SettingsDep) -> Response:
    token = settings.metrics_token
    if token is None:
        if not _loopback(request.client.host if request.client else None):
            return problem(404, "Not found", "Not Found", code="not_found")
    else:
        scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 token.get_secret_value().encode()):
            return problem(401, "Missing or invalid metrics token",
                           "Send the metrics token as 'Authorization: Bearer <token>' (TUNEQ_METRICS_TOKEN).",
                           code="unauthorized", headers={"WWW-Authenticate": "Bearer"})
    body = await in_sql_thread(_exposition, settings.prometheus_multiproc_dir)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
