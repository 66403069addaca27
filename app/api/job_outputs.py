"""What a running or finished job produced, by kind: generation items, training metrics and checkpoints."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from starlette.responses import Response

from app.api.deps import CallerDep, SessionDep
from app.api.responses import JSON
from app.services import generation as generation_service
from app.services import training as training_service

router = APIRouter(prefix="/v1", tags=["jobs"])


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


