"""Uploads and artifacts: HTTP only."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse, Response

from app.api.deps import CallerDep, SessionDep, SettingsDep
from app.api.responses import JSON
from app.chat import render_pieces, validate_conversation
from app.db import session_scope
from app.errors import InvalidRequest
from app.services import artifacts as artifacts_service

router = APIRouter(prefix="/v1", tags=["artifacts"])


@router.post("/files", status_code=201, openapi_extra={
    "requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def upload_file(
    request: Request,
    caller: CallerDep,
    settings: SettingsDep,
    name: Annotated[str, Query(min_length=1, max_length=255, description="file name, e.g. train.jsonl")],
    format: Annotated[Literal["jsonl", "json", "parquet", "csv"] | None, Query()] = None,
) -> Response:
    """Upload a dataset file as the raw request body (streamed to the store, never held in memory):
    `curl --data-binary @train.jsonl "$API/v1/files?name=train.jsonl"`."""
    caller.require("jobs:write")
    fmt = artifacts_service.upload_format(name, format)
    artifact_id, writer = artifacts_service.begin_upload(caller.team_id, name)
    try:
        async for chunk in request.stream():
            artifacts_service.write_chunk(writer, chunk, settings.max_upload_bytes)
    except BaseException:
        writer.abort()
        raise

    def _finish() -> dict[str, Any]:
        with session_scope() as session:
            return artifacts_service.finish_upload(session, team_id=caller.team_id, artifact_id=artifact_id,
                                                   name=name, fmt=fmt, writer=writer)

    return JSON(await run_in_threadpool(_finish), status_code=201)


@router.get("/artifacts/{artifact_id}")
def get_artifact(artifact_id: str, caller: CallerDep, session: SessionDep) -> Response:
    return JSON(artifacts_service.get(session, team_id=caller.team_id, artifact_id=artifact_id))


@router.get("/artifacts/{artifact_id}/content")
def download_artifact(artifact_id: str, caller: CallerDep, session: SessionDep) -> Response:
    path, meta = artifacts_service.path_of(session, team_id=caller.team_id, artifact_id=artifact_id)
    return FileResponse(path, filename=meta["name"], headers={"X-Content-SHA256": meta["sha256"] or ""})


@router.get("/artifacts/{artifact_id}/preview")
def preview_artifact(artifact_id: str, caller: CallerDep, session: SessionDep,
                     rows: Annotated[int, Query(ge=1, le=100)] = 5) -> Response:
    path, meta = artifacts_service.path_of(session, team_id=caller.team_id, artifact_id=artifact_id)
    return JSON({"artifact_id": artifact_id, "rows": artifacts_service.preview(path, meta["format"], rows)})


@router.post("/artifacts/{artifact_id}/render")
def render_artifact_row(
    artifact_id: str,
    caller: CallerDep,
    session: SessionDep,
    row: Annotated[int, Query(ge=0, description="row index, from 0")] = 0,
    train_on: Literal["all_assistant", "last_assistant"] = "all_assistant",
    enable_thinking: bool = True,
) -> Response:
    """Exactly what training will see for one row: Qwen3 tokens, their text and their loss weights."""
    path, meta = artifacts_service.path_of(session, team_id=caller.team_id, artifact_id=artifact_id)
    if meta["format"] != "chatml_jsonl":
        raise InvalidRequest(f"Rendering needs a ChatML dataset artifact; this one is {meta['format']}.")
    messages = artifacts_service.nth_row(path, row).get("messages")
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
