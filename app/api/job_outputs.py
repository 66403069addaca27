"""What a running or finished job produced, by kind: generation items, evaluation samples, training metrics and
checkpoints."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query
from starlette.responses import Response, StreamingResponse

from app.api.deps import CallerDep, SessionDep
from app.api.responses import JSON
from app.schemas.outputs import CheckpointsPage, ItemsPage, MetricsPage, SamplesPage
from app.services import evaluation as evaluation_service
from app.services import generation as generation_service
from app.services import training as training_service

router = APIRouter(prefix="/v1", tags=["jobs"])

INT32_MAX = 2**31 - 1  # steps and item indexes are SQL integers: a larger cursor is a 422, not a 5xx
Step = Annotated[int, Query(ge=-1, le=INT32_MAX, description="return steps after this one (a next_cursor)")]
Names = Annotated[str | None, Query(max_length=2000, description="comma-separated, e.g. loss,val_loss,lr")]


def _names(names: str | None) -> list[str] | None:
    return [n.strip() for n in names.split(",") if n.strip()] if names else None


@router.get("/jobs/{job_id}/items", response_model=ItemsPage)
def generation_items(
    job_id: str,
    caller: CallerDep,
    session: SessionDep,
    status: Literal["pending", "ok", "failed"] | None = None,
    after: Annotated[int, Query(ge=-1, le=INT32_MAX)] = -1,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> Response:
    """A generation job's items (e.g. `?status=failed` to see why items failed), paged by index."""
    data, has_more = generation_service.list_items(session, team_id=caller.team_id, job_id=job_id, status=status,
                                                   after=after, limit=limit)
    return JSON({"data": data, "has_more": has_more, "next_cursor": data[-1]["index"] if has_more else None})


@router.get("/jobs/{job_id}/samples", response_model=SamplesPage)
def evaluation_samples(
    job_id: str,
    caller: CallerDep,
    session: SessionDep,
    model: Annotated[str | None, Query(max_length=1024, description="only this model's replies (its label)")] = None,
    verdict: Literal["win", "tie", "loss", "error"] | None = None,
    after: Annotated[str | None, Query(max_length=1100, description="a next_cursor")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> Response:
    """An evaluation job's sampled replies side by side (prompt, reference, reply, the opponent's reply, the
    judge's verdict and reason), in (row, model) order; e.g. `?model=ckpt_…&verdict=loss` to read what it lost."""
    data, has_more = evaluation_service.list_samples(session, team_id=caller.team_id, job_id=job_id, model=model,
                                                     verdict=verdict, after=after, limit=limit)
    last = data[-1] if has_more else None
    return JSON({"data": data, "has_more": has_more,
                 "next_cursor": f"{last['row']}:{last['model']}" if last is not None else None})


def _jsonl(job_id: str, names: list[str] | None, after_step: int) -> Iterator[bytes]:
    for chunk in training_service.iter_metric_rows(job_id, names, after_step):
        yield b"".join(orjson.dumps({"step": s, "name": n, "value": v}, option=orjson.OPT_APPEND_NEWLINE)
                       for s, n, v in chunk)


def _csv(job_id: str, names: list[str] | None, after_step: int) -> Iterator[bytes]:
    yield b"step,name,value\r\n"
    for chunk in training_service.iter_metric_rows(job_id, names, after_step):
        out = io.StringIO()
        csv.writer(out).writerows(chunk)
        yield out.getvalue().encode()


_STREAM_DOC: dict[int | str, dict[str, Any]] = {200: {"description": "every metric row in step order, streamed",
                     "content": {"application/x-ndjson": {}, "text/csv": {}}}}


@router.get("/jobs/{job_id}/metrics", response_model=MetricsPage, responses=_STREAM_DOC)
def training_metrics(
    job_id: str,
    caller: CallerDep,
    session: SessionDep,
    names: Names = None,
    after_step: Step = -1,
    limit: Annotated[int, Query(ge=1, le=10_000, description="at most this many steps")] = 1000,
    format: Annotated[Literal["csv", "jsonl"] | None, Query(
        description="download the whole series (streamed) as CSV or JSONL instead of a page")] = None,
) -> Response:
    """A training job's per-step metrics as series of [step, value], at most `limit` steps per page; with
    `format=csv|jsonl` (or at `/metrics.csv`, `/metrics.jsonl`) the whole history, streamed."""
    if format is not None:
        return training_metrics_download(job_id, format, caller, session, names, after_step)
    series, next_cursor = training_service.metric_series(session, team_id=caller.team_id, job_id=job_id,
                                                         names=_names(names), after_step=after_step, limit=limit)
    return JSON({"job_id": job_id, "series": series, "has_more": next_cursor is not None,
                 "next_cursor": next_cursor})


@router.get("/jobs/{job_id}/metrics.{fmt}", response_class=StreamingResponse, responses=_STREAM_DOC)
def training_metrics_download(job_id: str, fmt: Literal["jsonl", "csv"], caller: CallerDep, session: SessionDep,
                              names: Names = None, after_step: Step = -1) -> Response:
    """The full metric history as JSONL (`{"step", "name", "value"}` per line) or CSV, read from SQL in chunks."""
    training_service.owned_job(session, team_id=caller.team_id, job_id=job_id)
    if fmt == "csv":
        return StreamingResponse(_csv(job_id, _names(names), after_step), media_type="text/csv",
                                 headers={"Content-Disposition": f'attachment; filename="{job_id}-metrics.csv"'})
    return StreamingResponse(_jsonl(job_id, _names(names), after_step), media_type="application/x-ndjson")


@router.get("/jobs/{job_id}/checkpoints", response_model=CheckpointsPage)
def training_checkpoints(
    job_id: str,
    caller: CallerDep,
    session: SessionDep,
    after: Annotated[str | None, Query(max_length=64, description="a checkpoint id (a next_cursor)")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> Response:
    """Checkpoints with their tinker:// paths as returned by Tinker, and the step each resumes at."""
    data, has_more = training_service.list_checkpoints(session, team_id=caller.team_id, job_id=job_id, after=after,
                                                       limit=limit)
    return JSON({"data": data, "has_more": has_more, "next_cursor": data[-1]["id"] if has_more else None})
