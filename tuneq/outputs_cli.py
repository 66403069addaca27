"""`tuneq files upload|ls`, `tuneq artifacts ls|download|preview|render` and `tuneq checkpoints ls`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from tuneq.cli_common import JsonOption, console, handles_errors, id_table, open_client, print_json

files = typer.Typer(help="Upload and list dataset files.", no_args_is_help=True)
artifacts = typer.Typer(help="List, download, preview and render job outputs.", no_args_is_help=True)
checkpoints = typer.Typer(help="A training job's checkpoints.", no_args_is_help=True)


def _bar(what: str) -> Progress:
    """On stderr, so stdout holds only the result (and --json stays parseable)."""
    return Progress(TextColumn(what), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=console(err=True))


@files.command("upload")
@handles_errors
def upload(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True, help="a .jsonl/.json/.csv/.parquet"),
    name: str = typer.Option(None, help="display name (default: the file name)"),
    label: list[str] = typer.Option([], help="a label as name:value (repeat for more)"),  # noqa: B006
    as_json: bool = JsonOption,
) -> None:
    """Upload a dataset file, streamed, with a progress bar."""
    with open_client() as tq, _bar(f"upload {escape(path.name)}") as bar:
        task = bar.add_task("upload", total=path.stat().st_size)
        artifact = tq.upload_file(path, name=name, labels=label or None,
                                  on_progress=lambda n: bar.advance(task, n))
    print_json(artifact) if as_json else console().print(f"uploaded {path.name}: file {artifact['id']}", markup=False)


def _artifact_table(rows: list[dict[str, object]]) -> Table:
    table = id_table(rows, "kind", "name", "format", "rows", "bytes", "status")
    for a in rows:
        table.add_row(*(escape(str(a.get(c) if a.get(c) is not None else "")) for c in
                        ("id", "kind", "name", "format", "rows", "bytes", "status")))
    return table


@files.command("ls")
@handles_errors
def list_files(label: str = typer.Option(None, help="only files with this label, as name:value"),
               as_json: bool = JsonOption) -> None:
    """List your team's uploaded files."""
    with open_client() as tq:
        page = tq.list_files(label=label)
    print_json(page) if as_json else console().print(_artifact_table([dict(a) for a in page["data"]]))


@artifacts.command("ls")
@handles_errors
def list_artifacts(job: str = typer.Option(None, help="only the outputs of this job"),
                   as_json: bool = JsonOption) -> None:
    """List your team's artifacts (job outputs and uploads)."""
    with open_client() as tq:
        page = tq.list_artifacts(job_id=job)
    print_json(page) if as_json else console().print(_artifact_table([dict(a) for a in page["data"]]))


@artifacts.command("download")
@handles_errors
def download(artifact_id: str, dest: Path = typer.Argument(Path("."), help="a file, or a folder to put it in")) -> None:
    """Download an artifact's content, with a progress bar."""
    with open_client() as tq, _bar(f"download {artifact_id}") as bar:
        task = bar.add_task("download", total=None)
        path = tq.download_artifact(artifact_id, dest,
                                    on_progress=lambda done, total: bar.update(task, completed=done, total=total))
    console().print(f"saved {path}", markup=False)


@artifacts.command("preview")
@handles_errors
def preview(artifact_id: str, rows: int = typer.Option(5, help="how many rows"), as_json: bool = JsonOption) -> None:
    """The first rows of a dataset artifact."""
    with open_client() as tq:
        page = tq.preview_artifact(artifact_id, rows=rows)
    if as_json:
        print_json(page)
        return
    columns = list(dict.fromkeys(k for row in page["rows"] for k in row))
    table = Table(*columns, header_style="bold", show_lines=True)
    for row in page["rows"]:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    console().print(table)


@artifacts.command("render")
@handles_errors
def render(artifact_id: str, row: int = typer.Option(0, help="which row"),
           train_on: str = typer.Option(None, help="which turns are trained on (as in a training spec)"),
           as_json: bool = JsonOption) -> None:
    """How one row is tokenized for training: trained pieces in bold green, the rest dim."""
    with open_client() as tq:
        out = tq.render_artifact(artifact_id, row=row, train_on=train_on)
    if as_json:
        print_json(out)
        return
    from rich.text import Text

    text = Text()
    for piece, weight in zip(out["pieces"], out["weights"], strict=False):
        text.append(piece, style="bold green" if weight > 0 else "dim")
    console().print(text)
    console().print(f"{out['num_tokens']} tokens, {out['trained_tokens']} trained")


def _cell(value: object) -> str:
    text = value if isinstance(value, str) else repr(value)
    return escape(text if len(text) <= 300 else text[:300] + "…")  # data, not rich markup


@checkpoints.command("ls")
@handles_errors
def list_checkpoints(job_id: str = typer.Argument(..., help="a training job"), as_json: bool = JsonOption) -> None:
    """A training job's checkpoints, oldest first; `tuneq chat ID` talks to one with sampler weights."""
    with open_client() as tq:
        page = tq.list_checkpoints(job_id)
    if as_json:
        print_json(page)
        return
    table = id_table(page["data"], "step", "kind", "loss", "val_loss", "chat")
    for c in page["data"]:
        sampleable = c["kind"] == "sampler" or bool(c.get("sampler_uri"))
        table.add_row(c["id"], str(c["step"]), c["kind"], _number(c.get("loss")), _number(c.get("val_loss")),
                      "yes" if sampleable else "")
    console().print(table)


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"
