"""Job routes: HTTP only (parse → service → response)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request
from starlette.responses import Response

from app.api.deps import CallerDep, SessionDep, SettingsDep
from app.api.responses import JSON
from app.db import in_sql_thread, read_in_sql_thread, session_scope
from app.schemas.jobs import DryRun, JobCreate, JobList, JobRead
from app.services import jobs as jobs_service
from app.services.auth import Caller
from app.settings import Settings

router = APIRouter(prefix="/v1", tags=["jobs"])

log = logging.getLogger("tuneq.api")


def _submit(caller: Caller, body: JobCreate, idempotency_key: str | None, settings: Settings,
            dry_run: bool) -> tuple[dict, bool]:
    with session_scope() as session:
        return jobs_service.submit(
            session, caller=caller, body=body, spec=body.spec.model_dump(mode="json"), kind=body.kind,
            idempotency_key=idempotency_key, settings=settings, dry_run=dry_run,
        )


@router.post("/jobs", status_code=201, response_model=JobRead,
             responses={200: {"model": DryRun, "description": "dry_run=true: the checks passed; nothing created"}})
async def create_job(
    body: JobCreate,
    caller: CallerDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    dry_run: Annotated[bool, Query(description="check the job and estimate it without creating it")] = False,
) -> Response:
    """Spec fields that name an earlier job's output may hold `{"$ref": "JOB_ID.OUTPUT"}` (that job is then
    added to `depends_on`); they are filled in when the job is released."""
    caller.require("jobs:write")
    # One thread hop for all the blocking work (SQL, broker): this is the hot write path.
    job, replayed = await in_sql_thread(_submit, caller, body, idempotency_key, settings, dry_run)
    if dry_run:
        return JSON(job)
    return JSON(job, status_code=201, headers={"Idempotent-Replayed": "true"} if replayed else None)


def _jobs_page(team_id: str, **filters: Any) -> tuple[list[dict[str, Any]], bool, str | None]:
    with session_scope() as session:
        return jobs_service.list_jobs(session, team_id=team_id, **filters)


@router.get("/jobs", response_model=JobList)
async def list_jobs(
    caller: CallerDep,
    kind: Literal["dataset", "generation", "training", "evaluation", "export", "test"] | None = None,
    status: Literal["pending", "queued", "running", "succeeded", "failed", "cancelled"] | None = None,
    created_after: Annotated[datetime | None, Query(description="jobs created after this time (no zone = UTC)")
                             ] = None,
    label: Annotated[str | None, Query(max_length=401, description="name:value, each 1–200 characters, no "
                                                                   "control characters")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=100, description="next_cursor of the previous page")] = None,
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
