"""Pipeline routes: HTTP only (parse → service → response)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query
from starlette.responses import Response

from app.api.deps import CallerDep, SettingsDep
from app.api.responses import JSON
from app.db import in_sql_thread, read_in_sql_thread, session_scope
from app.schemas.pipelines import PipelineCreate, PipelineDryRun, PipelineList, PipelineRead
from app.services import pipelines as pipelines_service
from app.services.auth import Caller
from app.settings import Settings

router = APIRouter(prefix="/v1", tags=["pipelines"])


def _submit(caller: Caller, body: PipelineCreate, idempotency_key: str | None, settings: Settings,
            dry_run: bool) -> tuple[dict, bool]:
    with session_scope() as session:
        return pipelines_service.submit(session, caller=caller, body=body, idempotency_key=idempotency_key,
                                        settings=settings, dry_run=dry_run)


@router.post("/pipelines", status_code=201, response_model=PipelineRead,
             responses={200: {"model": PipelineDryRun, "description": "dry_run=true: every step's checks passed; "
                                                                      "nothing created"}})
async def create_pipeline(
    body: PipelineCreate,
    caller: CallerDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    dry_run: Annotated[bool, Query(description="check every step and estimate it without creating anything")
                       ] = False,
) -> Response:
    """Submit named steps at once. A step's spec takes an earlier step's output with `{"$ref": "STEP.OUTPUT"}`
    (dataset: `train_artifact`, `validation_artifact`; generation: `train_artifact`; training: `sampler_path`,
    `state_path`; any step: `id`), filled in when that step succeeded. A step that fails or is cancelled cancels
    every step after it, each saying which step it was."""
    caller.require("jobs:write")
    pipeline, replayed = await in_sql_thread(_submit, caller, body, idempotency_key, settings, dry_run)
    if dry_run:
        return JSON(pipeline)
    return JSON(pipeline, status_code=201, headers={"Idempotent-Replayed": "true"} if replayed else None)


def _page(team_id: str, limit: int, cursor: str | None) -> tuple[list, bool, str | None]:
    with session_scope() as session:
        return pipelines_service.list_pipelines(session, team_id=team_id, limit=limit, cursor=cursor)


@router.get("/pipelines", response_model=PipelineList)
async def list_pipelines(
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=100, description="next_cursor of the previous page")] = None,
) -> Response:
    data, has_more, next_cursor = await read_in_sql_thread(_page, caller.team_id, limit, cursor)
    return JSON({"data": data, "has_more": has_more, "next_cursor": next_cursor})


def _get(team_id: str, pipeline_id: str) -> dict:
    with session_scope() as session:
        return pipelines_service.get(session, team_id=team_id, pipeline_id=pipeline_id)


@router.get("/pipelines/{pipeline_id}", response_model=PipelineRead)
async def get_pipeline(pipeline_id: str, caller: CallerDep) -> Response:
    return JSON(await read_in_sql_thread(_get, caller.team_id, pipeline_id))


def _cancel(team_id: str, pipeline_id: str) -> dict:
    with session_scope() as session:
        return pipelines_service.cancel(session, team_id=team_id, pipeline_id=pipeline_id)


@router.post("/pipelines/{pipeline_id}/cancel", response_model=PipelineRead)
async def cancel_pipeline(pipeline_id: str, caller: CallerDep) -> Response:
    """Cancel every step that has not finished; finished steps keep their outputs."""
    caller.require("jobs:write")
    return JSON(await in_sql_thread(_cancel, caller.team_id, pipeline_id))
