"""Watching a job: its events as a page or a live SSE stream, and the long-poll `wait`. HTTP only: streams and
waits are fed by the process's event hub (app.services.event_hub, docs/architecture.md "Watching a job")."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from starlette.responses import Response

from app.api.deps import CallerDep
from app.api.event_stream import EventStream, encode
from app.api.responses import JSON
from app.db import read_in_sql_thread, session_scope
from app.schemas.jobs import EventList, JobRead
from app.services import auth as auth_service
from app.services import jobs as jobs_service
from app.services.auth import Caller
from app.services.watching import Watch

router = APIRouter(prefix="/v1", tags=["jobs"])

MAX_SEQ = 2**31 - 1  # event sequence numbers are 32-bit integers
PING_SECONDS = 15.0  # an idle stream sends a comment line this often, so proxies keep it open


def _events_page(team_id: str, job_id: str, after: int, limit: int) -> tuple[list[dict[str, Any]], bool]:
    with session_scope() as session:
        return jobs_service.list_events(session, team_id=team_id, job_id=job_id, after=after, limit=limit)


def _open_watch(request: Request, caller: Caller, job_id: str) -> Watch:
    """Registered with the hub and counted under the key's cap (429 past it); close it when done."""
    state = request.app.state
    token = auth_service.parse_bearer(request.headers.get("authorization"))
    watch = Watch(state.event_hub, state.watch_limits, state.key_cache, token, caller, job_id)
    watch.open()
    return watch


@router.get(
    "/jobs/{job_id}/events",
    response_model=EventList,
    responses={200: {"content": {"text/event-stream": {}}, "description": "JSON page, or SSE when asked"}},
)
async def job_events(
    job_id: str,
    request: Request,
    caller: CallerDep,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    last_event_id: Annotated[int | None, Header(ge=0, le=MAX_SEQ)] = None,
) -> Response:
    """A page of events after `after`; with `Accept: text/event-stream`, a live stream until the job ends
    (resumed after `Last-Event-ID` when sent)."""
    start = last_event_id if last_event_id is not None else after
    if "text/event-stream" not in request.headers.get("accept", ""):
        first, has_more = await read_in_sql_thread(_events_page, caller.team_id, job_id, start, limit)
        return JSON({"data": first, "has_more": has_more, "next_cursor": first[-1]["seq"] if has_more else None})

    watch = _open_watch(request, caller, job_id)  # before the replay read, so nothing falls in between
    try:
        replay = await watch.first_page(start)
    except BaseException:
        watch.close()
        raise

    async def frames() -> AsyncIterator[bytes | None]:
        async for event in watch.follow(start, replay):
            yield None if event is None else encode(job_id, event)

    return EventStream(frames(), watch.close, ping_seconds=PING_SECONDS)


@router.get("/jobs/{job_id}/wait", response_model=JobRead)
async def wait_for_job(
    job_id: str, request: Request, caller: CallerDep, timeout: Annotated[float, Query(ge=0, le=120)] = 30
) -> Response:
    """Long-poll: answers as soon as the job ends, or with its current state after `timeout` seconds."""
    watch = _open_watch(request, caller, job_id)
    try:
        return JSON(await watch.wait(timeout))
    finally:
        watch.close()
