"""What `tuneq jobs watch` draws: a progress bar with the ETA, and for training the loss curves and the latest
checkpoint, for a pipeline one line per step. Pure functions of what the service returned."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table

from tuneq.cli_common import styled

SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 40) -> str:
    """The last `width` values as block characters, low to high."""
    values = values[-width:]
    if not values:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(SPARKS[round((v - low) / span * (len(SPARKS) - 1))] for v in values)


def progress_line(progress: dict[str, Any] | None, status: str, *, with_status: bool = True) -> Table:
    """`[bar] done/total unit  ETA 1m05s  status`."""
    progress = progress or {}
    done, total = progress.get("done") or 0, progress.get("total")
    line = Table.grid(padding=(0, 1))
    finished = status == "succeeded"
    bar = ProgressBar(total=float(total) if total else None, completed=float(total if finished and total else done),
                      width=30, pulse=not total and status == "running")
    count = f"{done}/{total}" if total else str(done)
    eta = progress.get("eta_seconds")
    eta_text = f"ETA {_duration(eta)}" if eta is not None and status == "running" else ""
    line.add_row(bar, f"{count} {progress.get('unit', '')}".strip(), eta_text, styled(status) if with_status else "")
    return line


def job_view(job: dict[str, Any], series: dict[str, list[float]], checkpoint: dict[str, Any] | None) -> Group:
    parts: list[RenderableType] = [f"job {job['id']} ({job['kind']})", progress_line(job.get("progress"),
                                                                                      job["status"])]
    for name in ("loss", "val_loss"):
        if series.get(name):
            parts.append(f"{name:>8} {sparkline(series[name])} {series[name][-1]:.4f}")
    if checkpoint:
        parts.append(f"latest checkpoint: {checkpoint['id']} (step {checkpoint['step']})")
    return Group(*parts)


def pipeline_view(pipeline: dict[str, Any]) -> Group:
    steps = Table(show_header=True, header_style="bold", box=None)
    for column in ("step", "kind", "status", "progress"):
        steps.add_column(column)
    for step in pipeline["steps"]:
        steps.add_row(escape(step["name"]), step["kind"], styled(step["status"]),
                      progress_line(step.get("progress"), step["status"], with_status=False))
    title = f"pipeline {pipeline['id']}" + (f" ({pipeline['name']})" if pipeline.get("name") else "")
    return Group(f"{escape(title)}: {styled(pipeline['status'])}", steps)


def ending(what: str, thing: dict[str, Any]) -> str:
    """The final line: the status, and the error message when it failed."""
    error = thing.get("error")
    if error is None and what == "pipeline":
        error = next((s["error"] for s in thing["steps"] if s.get("error")), None)
    message = f": {escape(error['message'])}" if error else ""
    return f"{what} {thing['id']} {styled(thing['status'])}{message}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
