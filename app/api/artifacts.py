"""Uploads and artifacts: HTTP only."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse, Response

from app.api.deps import CallerDep, SessionDep, SettingsDep
from app.api.responses import JSON
from app.chat import render_pieces, validate_conversation
from app.db import read_in_sql_thread, session_scope
from app.errors import InvalidRequest
from app.schemas.artifacts import ArtifactList, ArtifactOut, ArtifactPatch, PreviewOut, RenderOut
from app.services import artifact_catalog
from app.services import artifacts as artifacts_service

router = APIRouter(prefix="/v1", tags=["artifacts"])


def _in_use(team_id: str) -> int:
    with session_scope() as session:
        return artifacts_service.uploads_in_use(session, team_id)


@router.post("/files", status_code=201, response_model=ArtifactOut, openapi_extra={
    "requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def upload_file(
    request: Request,
    caller: CallerDep,
    settings: SettingsDep,
    name: Annotated[str | None, Query(min_length=1, max_length=255,
                                      description="display name (default: filename), at most 255 bytes of UTF-8; "
                                                  "also the file name when `filename` is not given")] = None,
    filename: Annotated[str | None, Query(min_length=1, max_length=255,
                                          description="the uploaded file's name, e.g. train.jsonl: its extension "
                                                      "gives the format (default: name)")] = None,
    format: Annotated[Literal["jsonl", "json", "parquet", "csv"] | None, Query()] = None,
    label: Annotated[list[str] | None, Query(max_length=50, description="a label as name:value (repeat for more, "
                                                                        "at most 50)")] = None,
) -> Response:
    """Upload a dataset file as the raw request body (streamed to the store, never held in memory):
    `curl --data-binary @train.jsonl "$API/v1/files?filename=train.jsonl&name=Stage%201%20mix&label=stage:1"`.
    A team's uploads together may hold at most `TUNEQ_UPLOAD_QUOTA_BYTES`."""
    caller.require("jobs:write")
    if name is None and filename is None:
        raise InvalidRequest("name: give the file's name (?filename=train.jsonl) or a display name (?name=…).",
                             errors=[{"loc": ["query", "name"], "msg": "missing"}])
    filename = artifacts_service.validate_upload_name(filename, ("query", "filename")) if filename else None
    name = artifacts_service.validate_upload_name(name) if name else filename
    assert name is not None
    fmt = artifacts_service.upload_format(filename or name, format)
    labels = artifact_catalog.parse_labels(label or [], ["query", "label"])
    quota = settings.upload_quota_bytes
    in_use = await run_in_threadpool(_in_use, caller.team_id)
    artifacts_service.check_quota(in_use, quota)
    artifact_id, writer = artifacts_service.begin_upload(caller.team_id, fmt)
    try:
        async for chunk in request.stream():
            artifacts_service.write_chunk(writer, chunk, settings.max_upload_bytes, in_use=in_use, quota=quota)
    except BaseException:  # a limit, the client gone, a cancellation: nothing stays on disk
        artifacts_service.discard(writer)
        raise

    def _finish() -> dict[str, Any]:
        with session_scope() as session:
            return artifacts_service.finish_upload(session, team_id=caller.team_id, artifact_id=artifact_id,
                                                   name=name, fmt=fmt, writer=writer, labels=labels,
                                                   meta={"filename": filename} if filename else None)

    return JSON(await run_in_threadpool(_finish), status_code=201)


@router.get("/artifacts/{artifact_id}", response_model=ArtifactOut)
def get_artifact(artifact_id: str, caller: CallerDep, session: SessionDep) -> Response:
    return JSON(artifacts_service.get(session, team_id=caller.team_id, artifact_id=artifact_id))


@router.get("/artifacts/{artifact_id}/content", response_class=FileResponse, responses={
    200: {"description": "the file's bytes, with its sha256 in X-Content-SHA256",
          "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
def download_artifact(artifact_id: str, caller: CallerDep, session: SessionDep) -> Response:
    path, meta = artifacts_service.path_of(session, team_id=caller.team_id, artifact_id=artifact_id)
    return FileResponse(path, filename=meta["name"], media_type="application/octet-stream",
                        headers={"X-Content-SHA256": meta["sha256"] or ""})


@router.get("/artifacts/{artifact_id}/preview", response_model=PreviewOut)
def preview_artifact(artifact_id: str, caller: CallerDep, session: SessionDep, settings: SettingsDep,
                     rows: Annotated[int, Query(ge=1, le=100)] = 5) -> Response:
    """The first rows of a JSONL artifact; a row over `TUNEQ_PREVIEW_MAX_ROW_BYTES` answers 422."""
    path, meta = artifacts_service.path_of(session, team_id=caller.team_id, artifact_id=artifact_id)
    return JSON({"artifact_id": artifact_id,
                 "rows": artifacts_service.preview(path, meta["format"], rows,
                                                   max_row_bytes=settings.preview_max_row_bytes)})


@router.post("/artifacts/{artifact_id}/render", response_model=RenderOut)
def render_artifact_row(
    artifact_id: str,
    caller: CallerDep,
    session: SessionDep,
    settings: SettingsDep,
    row: Annotated[int, Query(ge=0, le=2**31 - 1, description="row index, from 0")] = 0,
    train_on: Literal["all_assistant", "last_assistant"] = "all_assistant",
    enable_thinking: bool = True,
) -> Response:
    """Exactly what training will see for one row: Qwen3 tokens, their text and their loss weights."""
    path, meta = artifacts_service.path_of(session, team_id=caller.team_id, artifact_id=artifact_id)
    if meta["format"] != "chatml_jsonl":
        raise InvalidRequest(f"Rendering needs a ChatML dataset artifact; this one is {meta['format']}.")
    messages = artifacts_service.nth_row(path, row, max_row_bytes=settings.preview_max_row_bytes).get("messages")
    problem = validate_conversation(messages)
    if problem is not None:
        raise InvalidRequest(f"Row {row} is not a valid conversation: {problem.field}: {problem.message}")
    assert isinstance(messages, list)
    pieces = render_pieces(messages, train_on=train_on, enable_thinking=enable_thinking)
    return JSON({
        "artifact_id": artifact_id, "row": row, "num_tokens": len(pieces),
        "trained_tokens": sum(1 for p in pieces if p.weight),
        "tokens": [p.token for p in pieces], "pieces": [p.text for p in pieces],
        "weights": [p.weight for p in pieces],
    })


# ---- finding and deleting (docs/architecture.md, "Artifacts") ----------------------------------------------

Word = Annotated[str | None, Query(max_length=32, description="1–32 of a–z, 0–9, '_', '-', '.'")]
NameFilter = Annotated[str | None, Query(max_length=256, description="exact name, or a prefix ending with '*' "
                                                                     "(e.g. train*); no control characters")]
CreatedAfter = Annotated[datetime | None, Query(description="created after this time (no zone = UTC)")]
LabelFilter = Annotated[str | None, Query(max_length=401, description="name:value, each 1–200 characters, no "
                                                                      "control characters")]
Limit = Annotated[int, Query(ge=1, le=200)]
Cursor = Annotated[str | None, Query(max_length=100, description="next_cursor of the previous page")]
IN_USE: dict[int | str, dict[str, Any]] = {409: {"description": "A pending, queued or running job of the team uses it (`detail` names the jobs)",
                "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}}


def _artifacts_page(team_id: str, **filters: Any) -> tuple[list[dict[str, Any]], bool, str | None]:
    with session_scope() as session:
        return artifact_catalog.list_artifacts(session, team_id=team_id, **filters)


@router.get("/files", response_model=ArtifactList)
async def list_files(caller: CallerDep, name: NameFilter = None, format: Word = None,
                     created_after: CreatedAfter = None, label: LabelFilter = None, limit: Limit = 50,
                     cursor: Cursor = None) -> Response:
    """The team's uploads, newest first (the ids POST /v1/files answered)."""
    data, has_more, next_cursor = await read_in_sql_thread(
        _artifacts_page, caller.team_id, kind="upload", name=name, format=format, created_after=created_after,
        label=label, limit=limit, cursor=cursor)
    return JSON({"data": data, "has_more": has_more, "next_cursor": next_cursor})


@router.get("/artifacts", response_model=ArtifactList)
async def list_artifacts(
    caller: CallerDep,
    kind: Annotated[str | None, Query(max_length=32, description="upload, dataset, samples, adapter, …")] = None,
    job_id: Annotated[str | None, Query(max_length=100, description="outputs of this job")] = None,
    name: NameFilter = None,
    format: Word = None,
    created_after: CreatedAfter = None,
    label: LabelFilter = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    """All the team's artifacts, uploads and job outputs, newest first."""
    data, has_more, next_cursor = await read_in_sql_thread(
        _artifacts_page, caller.team_id, kind=kind, job_id=job_id, name=name, format=format,
        created_after=created_after, label=label, limit=limit, cursor=cursor)
    return JSON({"data": data, "has_more": has_more, "next_cursor": next_cursor})


@router.delete("/artifacts/{artifact_id}", status_code=204, response_class=Response, responses=IN_USE)
def delete_artifact(artifact_id: str, caller: CallerDep, session: SessionDep) -> Response:
    """Delete an upload or a job's output: its row and its file. Refused (409) while an unfinished job uses it."""
    caller.require("jobs:write")
    artifact_catalog.delete_artifact(session, team_id=caller.team_id, artifact_id=artifact_id)
    return Response(status_code=204)


@router.delete("/files/{file_id}", status_code=204, response_class=Response, responses=IN_USE)
def delete_file(file_id: str, caller: CallerDep, session: SessionDep) -> Response:
    """DELETE /v1/artifacts/{id} for uploads only (a job's output answers 404 here)."""
    caller.require("jobs:write")
    artifact_catalog.delete_artifact(session, team_id=caller.team_id, artifact_id=file_id, uploads_only=True)
    return Response(status_code=204)


@router.patch("/artifacts/{artifact_id}", response_model=ArtifactOut)
def update_artifact(artifact_id: str, body: ArtifactPatch, caller: CallerDep, session: SessionDep) -> Response:
    """Rename an upload or a job's output, or change its labels (`{"labels": {"stage": "2", "old": null}}` sets
    `stage` and removes `old`; labels not named stay)."""
    caller.require("jobs:write")
    return JSON(artifact_catalog.update_artifact(session, team_id=caller.team_id, artifact_id=artifact_id,
                                                 name=body.name, labels=body.labels))


@router.patch("/files/{file_id}", response_model=ArtifactOut)
def update_file(file_id: str, body: ArtifactPatch, caller: CallerDep, session: SessionDep) -> Response:
    """PATCH /v1/artifacts/{id} for uploads only (a job's output answers 404 here)."""
    caller.require("jobs:write")
    return JSON(artifact_catalog.update_artifact(session, team_id=caller.team_id, artifact_id=file_id,
                                                 name=body.name, labels=body.labels, uploads_only=True))
