"""Watching a job: its events as a page or a live SSE stream, and the long-poll `wait`. HTTP only."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse
from starlette.responses import Response

from app.api.deps import CallerDep
from app.api.responses import JSON
from app.db import DatabaseUnavailable, is_transient, read_in_sql_thread, session_scope
from app.models import TERMINAL_STATUSES
from app.schemas.jobs import EventList, JobRead
from app.services import jobs as jobs_service

router = APIRouter(prefix="/v1", tags=["jobs"])

POLL_SECONDS = 0.2
STREAM_RETRY_SECONDS = 1.0  # a live event stream's next look while the database is away
log = logging.getLogger("tuneq.api")


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
