"""What every teammates' command shares: the client from the login, --json output, and the exit codes
(0 success, 1 the job failed or was cancelled, 2 a usage error or a 4xx from the service, 3 unreachable or a
5xx after the client's retries, 130 Ctrl-C)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Column, Table

from tuneq import config
from tuneq.client import Client
from tuneq.errors import ApiError, ServiceUnreachable

JOB_ENDED_BADLY, USAGE, UNREACHABLE, INTERRUPTED = 1, 2, 3, 130
PIPED_WIDTH = 120
STATUS_STYLE = {"pending": "dim", "queued": "cyan", "running": "blue", "succeeded": "green", "failed": "red",
                "cancelled": "yellow"}
JsonOption = typer.Option(False, "--json", help="print the service's JSON instead of a table")

P = ParamSpec("P")
R = TypeVar("R")


def console(*, err: bool = False) -> Console:
    """Built per call, so it writes to whatever stdout is now (a terminal, a pipe, a test's capture). Piped
    output gets room for a full table row (rich's default there is 80 columns) unless COLUMNS says otherwise."""
    out = Console(stderr=err, highlight=False, soft_wrap=False)
    if not out.is_terminal and not out.is_jupyter and out.width == 80:
        out.width = PIPED_WIDTH
    return out


def styled(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'default')}]{status}[/]"


def id_table(rows: Sequence[Mapping[str, object]], *headers: str) -> Table:
    """A table whose first column holds the rows' ids, wide enough never to be cut (they are copied into commands)."""
    width = max((len(str(row["id"])) for row in rows), default=2)
    return Table(Column("id", no_wrap=True, min_width=width), *headers, header_style="bold")


def open_client() -> Client:
    login = config.load()
    if login is None:
        console(err=True).print("no service configured: run `tuneq login`, or set TUNEQ_URL and TUNEQ_API_KEY")
        raise typer.Exit(USAGE)
    return Client(login.url, login.api_key, retries=3, backoff=0.25)


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))


def handles_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn the client's errors into a message on stderr and the documented exit code."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except ApiError as exc:
            console(err=True).print(f"error {exc.status}: {exc.message}", markup=False)
            raise typer.Exit(USAGE if exc.status < 500 else UNREACHABLE) from None
        except ServiceUnreachable as exc:
            console(err=True).print(f"error: {exc}", markup=False)
            raise typer.Exit(UNREACHABLE) from None
        except KeyboardInterrupt:  # Ctrl-C stops watching, not the job; 1 would mean "the job failed"
            raise typer.Exit(INTERRUPTED) from None

    return wrapper
