"""Checkpoint routes: try one (chat) and export one (an export job). HTTP only (parse → service → response)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Request
from starlette.responses import Response

from app.api.deps import CallerDep, SettingsDep
from app.api.openapi import PROBLEM_MEDIA_TYPE, PROBLEM_REF
from app.api.responses import JSON
from app.db import in_sql_thread, read_in_sql_thread, session_scope
from app.schemas.chat import ChatRequest, ChatResponse
from app.schemas.jobs import CheckpointExportCreate, JobRead
from app.services import chat as chat_service
from app.services import exports as exports_service
from app.services.auth import Caller
from app.services.ratelimit import Limiter, TooManyRequests, parse_limits
from app.settings import Settings

router = APIRouter(prefix="/v1", tags=["checkpoints"])


def _problem(description: str) -> dict[str, Any]:
    """An error status only these routes answer, declared with its problem+json body."""
    return {"description": description, "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": PROBLEM_REF}}}}


def _target(team_id: str, ref: str, settings: Settings) -> chat_service.Target:
    with session_scope() as session:
        return chat_service.resolve(session, team_id=team_id, ref=ref, settings=settings)


@router.post(
    "/checkpoints/{ref:path}/chat",
    response_model=ChatResponse,
    responses={404: {"description": "No such checkpoint in your team, and no such base model"},
               422: {"description": "Bad messages, or a checkpoint without sampler weights"},
               429: {"description": "Over TUNEQ_CHAT_RATE_LIMIT for this key"},
               503: {"description": "Tinker is not configured or did not answer"},
               504: _problem("No reply within TUNEQ_CHAT_TIMEOUT_SECONDS")},
)
async def chat(ref: str, body: ChatRequest, request: Request, caller: CallerDep, settings: SettingsDep) -> Response:
    """One reply from a checkpoint (its id, or a tinker:// path of one, URL-encoded) or a base model (e.g.
    `Qwen/Qwen3-8B`), to ChatML `messages` that end with a user turn. The prompt is rendered with the Qwen3
    chat format training uses; the reply's reasoning comes back apart from its answer."""
    caller.require("jobs:write")
    limiter: Limiter = request.app.state.chat_limiter
    over = await limiter.hit(f"chat:{caller.key_id}", parse_limits(settings.chat_rate_limit))
    if over is not None:
        retry, limit = over
        raise TooManyRequests(f"This API key went over its chat limit ({limit}, TUNEQ_CHAT_RATE_LIMIT); retry in "
                              f"{retry} s.", retry_after=retry)
    chat_service.check_messages(body.messages)
    target = await read_in_sql_thread(_target, caller.team_id, ref, settings)
    sampler: chat_service.ChatSampler = request.app.state.chat_sampler
    return JSON(await sampler.reply(target, body))


def _export(caller: Caller, checkpoint_id: str, body: CheckpointExportCreate, idempotency_key: str | None,
            settings: Settings) -> tuple[dict, bool]:
    with session_scope() as session:
        return exports_service.submit(session, caller=caller, checkpoint_id=checkpoint_id, body=body,
                                      idempotency_key=idempotency_key, settings=settings)


@router.post(
    "/checkpoints/{checkpoint_id}/export",
    status_code=202,
    response_model=JobRead,
    responses={404: {"description": "No such checkpoint in your team"},
               409: _problem("A request with this Idempotency-Key is in progress"),
               422: {"description": "The checkpoint has no training state to export"}},
)
async def export_checkpoint(
    checkpoint_id: str,
    caller: CallerDep,
    settings: SettingsDep,
    body: Annotated[CheckpointExportCreate | None, Body()] = None,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> Response:
    """Export a checkpoint's LoRA weights (Hugging Face PEFT format) as `adapter` artifacts, at any time: an
    `export` job, answered like POST /v1/jobs (Idempotency-Key honoured). Its result lists the artifacts."""
    caller.require("jobs:write")
    job, replayed = await in_sql_thread(_export, caller, checkpoint_id, body or CheckpointExportCreate(),
                                        idempotency_key, settings)
    return JSON(job, status_code=202, headers={"Idempotent-Replayed": "true"} if replayed else None)
