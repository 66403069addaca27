"""GET /metrics for Prometheus: the work waiting and running, read from SQL at scrape time.

The job rows are the truth for every API and worker process alike, so any API process answers for the whole
service (no per-process counters to merge). Aggregates only (by kind and status, never by team or job).

Access: with `TUNEQ_METRICS_TOKEN` set, a scrape sends `Authorization: Bearer <token>` (compared in constant
time; anything else is a 401). Unset, /metrics answers only clients on loopback (what `make run` and a sidecar
Prometheus use) and is a 404 for everyone else.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from ipaddress import ip_address

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.responses import Response

from app.api.deps import SettingsDep
from app.api.responses import problem
from app.db import in_sql_thread, session_scope
from app.models import Job, utcnow
from app.services import job_reads

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


_registry = CollectorRegistry(auto_describe=False)
_registry.register(JobsCollector())


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
    return Response(await in_sql_thread(generate_latest, _registry), media_type=CONTENT_TYPE_LATEST)
