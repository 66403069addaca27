"""Job routes: HTTP only (parse → service → response)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse
from starlette.responses import Response

from app.api.deps import CallerDep, SessionDep, SettingsDep
from app.api.responses import JSON
from app.db import DatabaseUnavailable, in_sql_thread, is_transient, read_in_sql_thread, session_scope
from app.models import TERMINAL_STATUSES
from app.schemas.jobs import EventList, JobCreate, JobList, JobRead
from app.services import generation as generation_service
from app.services import jobs as jobs_service
from app.services import training as training_service
from app.services.auth import Caller
from app.settings import Settings

router = APIRouter(prefix="/v1", tags=["jobs"])

POLL_SECONDS = 0.2
STREAM_RETRY_SECONDS = 1.0  # a live event stream's next look while the database is away
log = logging.getLogger("tuneq.api")


def _submit(caller: Caller, body: JobCreate, idempotency_key: str | None, settings: Settings) -> tuple[dict, bool]:
    with session_scope() as session:
        return jobs_service.submit(
            session, caller=caller, body=body, spec=body.spec.model_dump(mode="json"), kind=body.kind,
            idempotency_key=idempotency_key, settings=settings,
        )


@router.post("/jobs", status_code=201, response_model=JobRead)
async def create_job(
    body: JobCreate,
    caller: CallerDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> Response:
    caller.require("jobs:write")
    # One thread hop for all the blocking work (SQL, broker): this is the hot write path.
    job, replayed = await in_sql_thread(_submit, caller, body, idempotency_key, settings)
    return JSON(job, status_code=201, headers={"Idempotent-Replayed": "true"} if replayed else None)


def _jobs_page(team_id: str, **filters: Any) -> tuple[list[dict[str, Any]], bool, str | None]:
    with session_scope() as session:
        return jobs_service.list_jobs(session, team_id=team_id, **filters)


@router.get("/jobs", response_model=JobList)
async def list_jobs(
    caller: CallerDep,
    kind: str | None = None,
    status: Literal["pending", "queued", "running", "succeeded", "failed", "cancelled"] | None = None,
    created_after: datetime | None = None,
    label: Annotated[str | None, Query(description="name:value")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> Response:
    data, has_more, next_cursor = await read_in_sql_thread(
        _jobs_page, caller.team_id, kind=kind, status=status, created_after=created_after, label=label,
        limit=limit, cursor=cursor,
    )
    return JSON({"data": data, "has_more": has_more, "next_cursor": next_cursor})


@router.get("/jobs/{job_id}", response_model=JobRead)
async def get_job(job_id: str, request: Request, caller: CallerDep) -> Response:
    body = await request.app.state.job_reader.get_json(caller.team_id, job_id)
    return Response(body, media_type="application/json")


@router.post("/jobs/{job_id}/cancel", response_model=JobRead)
def cancel_job(job_id: str, caller: CallerDep, session: SessionDep) -> Response:
    caller.require("jobs:write")
    return JSON(jobs_service.cancel(session, team_id=caller.team_id, job_id=job_id))


@router.post(
    "/jobs/{job_id}/resume",
    response_model=JobRead,
    responses={409: {"description": "The job is not failed or cancelled, or a dependency has not succeeded"}},
)
def resume_job(job_id: str, caller: CallerDep, session: SessionDep) -> Response:
    """Continue a failed or cancelled job as the same run, with a fresh attempt budget: training resumes from
    its last checkpoint, generation skips the items it already made, other kinds run again. Its events show
    `resumed`."""
    caller.require("jobs:write")
    return JSON(jobs_service.resume(session, team_id=caller.team_id, job_id=job_id))


def _events_page(team_id: str, job_id: str, after: int, limit: int) -> tuple[list[dict[str, Any]], bool]:
    with session_scope() as session:
        return jobs_service.list_events(session, team_id=team_id, job_id=job_id, after=after, limit=limit)


def _job(team_id: str, job_id: str) -> dict[str, Any]:
    with session_scope() as session:
        return jobs_service.get(session, team_id=team_id, job_id=job_id)


@router.get(
    "/jobs/{job_id}/events",
    response_model=EventList,
    responses={200: {"content": {"text/event-stream": {}}, "description": "JSON page, or SSE when asked"}},
)
async def job_events(
    job_id: str,
    request: Request,
    caller: CallerDep,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    last_event_id: Annotated[int | None, Header(ge=0)] = None,
) -> Response:
    """A page of events after `after`; with `Accept: text/event-stream`, a live stream until the job ends."""
    start = last_event_id if last_event_id is not None else after
    first, has_more = await read_in_sql_thread(_events_page, caller.team_id, job_id, start, limit)
    if "text/event-stream" not in request.headers.get("accept", ""):
        return JSON({"data": first, "has_more": has_more, "next_cursor": first[-1]["seq"] if has_more else None})

    async def stream() -> AsyncIterator[dict[str, Any]]:
        batch, last = first, start
        while True:
            for event in batch:
                last = event["seq"]
                yield {"id": str(last), "event": event["type"], "data": orjson.dumps(event).decode()}
                if event["type"] in TERMINAL_STATUSES:  # a terminal event is named after its status
                    return
            try:
                if not batch and jobs_service.is_terminal(await read_in_sql_thread(_job, caller.team_id, job_id)):
                    # Ended before `last`: re-check once so a final event is never missed.
                    batch, _ = await read_in_sql_thread(_events_page, caller.team_id, job_id, last, 1000)
                    if not batch:
                        return
                    continue
                await asyncio.sleep(POLL_SECONDS)
                batch, _ = await read_in_sql_thread(_events_page, caller.team_id, job_id, last, 1000)
            except Exception as exc:
                # The response has started, so an error now would only drop the connection: wait for the
                # database instead (pings keep the stream open) and go on from the last event sent.
                if not (is_transient(exc) or isinstance(exc, DatabaseUnavailable)):
                    raise
                log.warning("event stream of %s: database unreachable (%s); waiting", job_id, type(exc).__name__)
                batch = []
                await asyncio.sleep(STREAM_RETRY_SECONDS)

    return EventSourceResponse(stream(), ping=15)


@router.get("/jobs/{job_id}/items")
def generation_items(
    job_id: str,
    caller: CallerDep,
    session: SessionDep,
    status: Literal["pending", "ok", "failed"] | None = None,
    after: Annotated[int, Query(ge=-1)] = -1,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> Response:
    """A generation job's items (e.g. `?status=failed` to see why items failed), paged by index."""
    data, has_more = generation_service.list_items(session, team_id=caller.team_id, job_id=job_id, status=status,
                                                   after=after, limit=limit)
    return JSON({"data": data, "has_more": has_more, "next_cursor": data[-1]["index"] if has_more else None})


@router.get("/jobs/{job_id}/metrics")
def training_metrics(
    job_id: str,
    caller: CallerDep,
    session: SessionDep,
    names: Annotated[str | None, Query(description="comma-separated, e.g. loss,val_loss,lr")] = None,
    after_step: Annotated[int, Query(ge=-1)] = -1,
) -> Response:
    """A training job's per-step metrics as series of [step, value]."""
    wanted = [n.strip() for n in names.split(",") if n.strip()] if names else None
    series = training_service.metric_series(session, team_id=caller.team_id, job_id=job_id, names=wanted,
                                            after_step=after_step)
    return JSON({"job_id": job_id, "series": series})


@router.get("/jobs/{job_id}/checkpoints")
def training_checkpoints(job_id: str, caller: CallerDep, session: SessionDep) -> Response:
    """Checkpoints with their tinker:// paths as returned by Tinker, and the step each resumes at."""
    return JSON({"data": training_service.list_checkpoints(session, team_id=caller.team_id, job_id=job_id)})


@router.get("/jobs/{job_id}/wait", response_model=JobRead)
async def wait_for_job(
    job_id: str, caller: CallerDep, timeout: Annotated[float, Query(ge=0, le=120)] = 30
) -> Response:
    """Long-poll: answers as soon as the job ends, or with its current state after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        job = await read_in_sql_thread(_job, caller.team_id, job_id)
        if jobs_service.is_terminal(job) or time.monotonic() >= deadline:
            return JSON(job)
        await asyncio.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
