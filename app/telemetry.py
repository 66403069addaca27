"""What each process counts for Prometheus, and the request context of API logs (docs/architecture.md, "Logs
and metrics").

Facts about jobs are read from SQL at scrape time (app/api/metrics.py), so any API process answers for every
worker on every machine. Only what exists nowhere else is counted here, per process: HTTP request durations.
Under `tuneq api --workers N` each process writes its counts to PROMETHEUS_MULTIPROC_DIR and a scrape of any
process sums them all (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

from prometheus_client import CollectorRegistry, Histogram, multiprocess
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from structlog.contextvars import bind_contextvars, clear_contextvars

from app.api.gate import CALLER

HTTP_DURATION = Histogram(
    "tuneq_http_request_duration_seconds",
    "Time from a request's arrival to its response headers, by route template (a stream's or a long-poll's "
    "time to its first byte). Requests refused before routing (bad key, unknown path) have route \"unrouted\".",
    labelnames=["method", "route", "status"], registry=None,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
_LOCAL = CollectorRegistry(auto_describe=False)
_LOCAL.register(HTTP_DURATION)

REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
JOB_PATH = re.compile(r"/v1/jobs/(job_[A-Za-z0-9]+)")


def process_registry(multiproc_dir: Path | None) -> CollectorRegistry:
    """Counts of every process on this machine (multiprocess mode), or of this process alone."""
    if multiproc_dir is None:
        return _LOCAL
    registry = CollectorRegistry(auto_describe=False)
    multiprocess.MultiProcessCollector(registry, path=str(multiproc_dir))
    return registry


def process_exited(multiproc_dir: Path | None, pid: int) -> None:
    """Drop a stopped process's live gauges (its counters and histograms keep counting in the sum)."""
    if multiproc_dir is not None:
        multiprocess.mark_process_dead(pid, path=str(multiproc_dir))


class RequestTelemetry:
    """Outermost middleware: a request id on every log line of the request and on the response
    (`X-Request-ID`, the client's own when it sends a sane one), and the request's duration by route."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                given = value.decode("latin-1")
                request_id = given if REQUEST_ID.fullmatch(given) else ""
                break
        request_id = request_id or uuid.uuid4().hex
        clear_contextvars()
        bind_contextvars(request_id=request_id)
        job = JOB_PATH.match(scope["path"])
        if job:
            bind_contextvars(job_id=job.group(1))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id.encode())]
                route = scope.get("route")
                HTTP_DURATION.labels(scope["method"], getattr(route, "path", "unrouted"),
                                     str(message["status"])).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            clear_contextvars()


class CallerContext:
    """Inside the key check: the caller's team on every log line of the request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        caller = scope.get("state", {}).get(CALLER)
        if caller is not None:
            bind_contextvars(team=caller.team_id)
        await self.app(scope, receive, send)
