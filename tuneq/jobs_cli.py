"""`tuneq jobs ls|show|watch|cancel|resume`."""

from __future__ import annotations

import json
import time
from typing import Any

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape

from tuneq.cli_common import (
    JOB_ENDED_BADLY,
    JsonOption,
    console,
    handles_errors,
    id_table,
    open_client,
    print_json,
    styled,
)
from tuneq.client import TERMINAL, Client
from tuneq.errors import ApiError
from tuneq.watch_view import ending, job_view, pipeline_view

jobs = typer.Typer(help="List, inspect, watch, cancel and resume jobs.", no_args_is_help=True)


def _job_or_pipeline(tq: Client, ref: str) -> tuple[str, dict[str, Any]]:
    """("job", job) or ("pipeline", pipeline): the commands take either id. Neither: the job's 404."""
    try:
        return "job", dict(tq.get_job(ref))
    except ApiError as exc:
        if exc.status != 404:
            raise
        try:
            return "pipeline", dict(tq.get_pipeline(ref))
        except ApiError:
            raise exc from None


@jobs.command("ls")
@handles_errors
def list_jobs(
    kind: str = typer.Option(None, help="only jobs of this kind"),
    status: str = typer.Option(None, help="only jobs in this status"),
    label: str = typer.Option(None, help="only jobs with this label, as name:value"),
    limit: int = typer.Option(50, help="at most this many (newest first)"),
    as_json: bool = JsonOption,
) -> None:
    """List your team's jobs."""
    with open_client() as tq:
        page = tq.list_jobs(kind=kind, status=status, label=label, limit=limit)
    if as_json:
        print_json(page)
        return
    table = id_table(page["data"], "kind", "status", "progress", "created", "labels")
    for job in page["data"]:
        progress = job.get("progress") or {}
        done = f"{progress.get('done', '')}/{progress.get('total') or '?'}" if progress else ""
        labels = " ".join(f"{k}:{v}" for k, v in job["labels"].items())
        created = job["created_at"][:16].replace("T", " ")
        table.add_row(job["id"], job["kind"], styled(job["status"]), done, created, escape(labels))
    console().print(table)


@jobs.command("show")
@handles_errors
def show(job_id: str = typer.Argument(..., help="a job id or a pipeline id"), as_json: bool = JsonOption) -> None:
    """A job's (or pipeline's) state, result or error."""
    with open_client() as tq:
        what, job = _job_or_pipeline(tq, job_id)
    if as_json:
        print_json(job)
        return
    out = console()
    if what == "pipeline":
        out.print(pipeline_view(job))
        return
    out.print(job_view(dict(job), {}, None))
    for field in ("created_at", "started_at", "finished_at", "attempt", "preemptions", "pipeline_id"):
        if job.get(field) is not None:
            out.print(f"{field}: {job.get(field)}", markup=False)
    if job.get("result"):
        out.print("result:", job["result"], markup=False)
    if error := job.get("error"):
        out.print(f"error: {error['message']}", markup=False)


@jobs.command("watch")
@handles_errors
def watch(job_id: str = typer.Argument(..., help="a job id or a pipeline id"),
          as_json: bool = typer.Option(False, "--json", help="a job's events as JSON lines, live (a pipeline: "
                                                             "its final JSON)")) -> None:
    """Follow a job (or pipeline) until it ends; exit 1 when it failed or was cancelled."""
    with open_client() as tq:
        what, _ = _job_or_pipeline(tq, job_id)
        if what == "pipeline":
            ended = _watch_pipeline(tq, job_id, as_json)
        else:
            ended = _stream_events(tq, job_id) if as_json else _watch_job(tq, job_id)
    if ended["status"] != "succeeded":
        raise typer.Exit(JOB_ENDED_BADLY)


def _stream_events(tq: Client, job_id: str) -> dict[str, Any]:
    """One JSON line per event, as the service sends them, until the terminal one."""
    status = "running"
    for event in tq.events(job_id):
        typer.echo(json.dumps(event, ensure_ascii=False))
        status = event["type"]
    return {"status": status}


def _watch_job(tq: Client, job_id: str) -> dict[str, Any]:
    series: dict[str, list[float]] = {"loss": [], "val_loss": []}
    after_step, checkpoint = None, None
    job: dict[str, Any] = dict(tq.get_job(job_id))
    out = console()
    with Live(job_view(job, series, checkpoint), console=out, refresh_per_second=4) as live:
        while True:
            job = dict(tq.wait(job_id, timeout=1.0))
            if job["kind"] == "training":
                page = tq.metrics(job_id, names="loss,val_loss", after_step=after_step)
                for name, points in page["series"].items():
                    series.setdefault(name, []).extend(v for _, v in points if v is not None)
                    after_step = max([after_step or 0, *(int(s or 0) for s, _ in points)])
                checkpoint = _latest_checkpoint(tq, job_id, checkpoint)
            live.update(job_view(job, series, checkpoint))
            if job["status"] in TERMINAL:
                break
    _end(out, ending("job", job))
    return job


def _watch_pipeline(tq: Client, pipeline_id: str, as_json: bool) -> dict[str, Any]:
    pipeline: dict[str, Any] = dict(tq.get_pipeline(pipeline_id))
    if as_json:
        while pipeline["status"] not in TERMINAL:
            time.sleep(1.0)
            pipeline = dict(tq.get_pipeline(pipeline_id))
        print_json(pipeline)
        return pipeline
    out = console()
    with Live(pipeline_view(pipeline), console=out, refresh_per_second=4) as live:
        while pipeline["status"] not in TERMINAL:
            time.sleep(1.0)
            pipeline = dict(tq.get_pipeline(pipeline_id))
            live.update(pipeline_view(pipeline))
    _end(out, ending("pipeline", pipeline))
    return pipeline


def _latest_checkpoint(tq: Client, job_id: str, known: dict[str, Any] | None) -> dict[str, Any] | None:
    """The run's newest checkpoint, paging on from the one already shown (a long run has hundreds)."""
    after = known["id"] if known else None
    while True:
        page = tq.list_checkpoints(job_id, after=after, limit=200)
        if page["data"]:
            known = dict(page["data"][-1])
            after = known["id"]
        if not page["has_more"]:
            return known


def _end(out: Console, line: str) -> None:
    if not out.is_terminal:
        out.line()  # piped, Live leaves its last frame without a line break
    out.print(line)


@jobs.command("cancel")
@handles_errors
def cancel(job_id: str = typer.Argument(..., help="a job id or a pipeline id"), as_json: bool = JsonOption) -> None:
    """Ask a job (or every step of a pipeline) to stop: it saves what it can, then ends cancelled."""
    with open_client() as tq:
        what, _ = _job_or_pipeline(tq, job_id)
        out: dict[str, Any] = dict(tq.cancel_pipeline(job_id) if what == "pipeline" else tq.cancel_job(job_id))
    print_json(out) if as_json else console().print(f"{what} {job_id}: cancel requested ({styled(out['status'])})")


@jobs.command("resume")
@handles_errors
def resume(job_id: str, as_json: bool = JsonOption) -> None:
    """Run a failed or cancelled job again from its last checkpoint."""
    with open_client() as tq:
        job = tq.resume_job(job_id)
    print_json(job) if as_json else console().print(f"job {job_id}: {styled(job['status'])}")
