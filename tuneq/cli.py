"""The `tuneq` command: the teammates' commands (login, submit, jobs, files, artifacts, checkpoints, chat) on
tuneq.client, plus the operator commands of app/cli.py (run, api, worker, migrate, keys) when the server's code
and dependencies are installed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer
import typer.main
import yaml
from rich.markup import escape
from rich.table import Table

from tuneq import config
from tuneq.cli_common import USAGE, console, handles_errors, open_client, print_json, styled
from tuneq.jobs_cli import jobs
from tuneq.outputs_cli import artifacts, checkpoints, files


def login(url: str = typer.Option(..., prompt=True, help="the service, e.g. http://127.0.0.1:8000"),
          api_key: str = typer.Option(..., prompt=True, hide_input=True, help="your API key")) -> None:
    """Save the service URL and your API key (in a file only you can read)."""
    path = config.save(config.Login(url.rstrip("/"), api_key))
    console().print(f"saved to {path}", markup=False)


@handles_errors
def submit(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="a job or pipeline, as YAML or JSON"),
    dry_run: bool = typer.Option(False, "--dry-run", help="validate and print the estimate; submit nothing"),
    as_json: bool = typer.Option(False, "--json", help="print the service's JSON"),
) -> None:
    """Submit a job (`kind` + `spec`) or a pipeline (`steps`)."""
    body = _read_spec(file)
    with open_client() as tq:
        pipeline = "steps" in body
        out: Any = (tq.submit_pipeline(body, dry_run=dry_run) if pipeline else tq.submit_job(body, dry_run=dry_run))
    if as_json:
        print_json(out)
        return
    if dry_run:
        console().print(estimate_view(out))
        return
    console().print(f"{'pipeline' if pipeline else 'job'} {out['id']} {styled(out['status'])}; "
                    f"follow it with `tuneq jobs watch {out['id']}`")


def estimate_view(dry: dict[str, Any]) -> Table:
    """The figures of a dry run (a job's, or a pipeline's total and per step), then its notes."""
    table = Table("", "estimate", header_style="bold", box=None)
    rows = [("", dry.get("estimate"))]
    rows += [(f"{name} ({step['kind']}) ", step.get("estimate")) for name, step in (dry.get("steps") or {}).items()]
    for prefix, estimate in rows:
        if not estimate:
            table.add_row(prefix.strip() or str(dry.get("kind", "")), "nothing is estimated for this kind")
            continue
        for key, value in estimate.items():
            if key != "notes" and not isinstance(value, dict | list):
                table.add_row(f"{prefix}{key}", "not known before it runs" if value is None else str(value))
        for note in estimate.get("notes") or []:
            table.add_row(f"{prefix}note", note)
    return table


def _read_spec(file: Path) -> dict[str, Any]:
    try:
        text = file.read_text()
        body = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError, UnicodeDecodeError) as exc:
        console(err=True).print(f"{file}: not valid {'JSON' if file.suffix == '.json' else 'YAML'}: {exc}",
                                markup=False)
        raise typer.Exit(USAGE) from None
    if not isinstance(body, dict):
        console(err=True).print(f"{file}: expected a mapping with `kind` and `spec`, or `steps`", markup=False)
        raise typer.Exit(USAGE)
    return body


@handles_errors
def chat(
    checkpoint: str = typer.Argument(..., help="a checkpoint id, or a base model"),
    system: str = typer.Option(None, help="a system prompt"),
    max_tokens: int = typer.Option(512, help="at most this many tokens per reply"),
    temperature: float = typer.Option(0.7, help="0 = greedy"),
) -> None:
    """Chat with a checkpoint, turn by turn (an empty line or Ctrl-D ends)."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    out = console()
    with open_client() as tq:
        while True:
            try:
                text = input("you> ").strip()
            except EOFError:
                break
            if not text:
                break
            messages.append({"role": "user", "content": text})
            reply = tq.chat(checkpoint, messages, max_tokens=max_tokens, temperature=temperature)
            messages.append({"role": "assistant", "content": reply["message"]["content"]})
            out.print(f"[bold]{escape(reply['model'])}>[/] ", end="")
            out.print(reply["message"]["content"], markup=False)


def build_app() -> typer.Typer:
    """One app: the teammates' commands always, the operator commands when app.cli imports."""
    tuneq = typer.Typer(help="tuneq: fine-tuning jobs for Qwen3 on Tinker.", no_args_is_help=True)
    tuneq.command()(login)
    tuneq.command()(submit)
    tuneq.command()(chat)
    tuneq.add_typer(jobs, name="jobs")
    tuneq.add_typer(files, name="files")
    tuneq.add_typer(artifacts, name="artifacts")
    tuneq.add_typer(checkpoints, name="checkpoints")
    try:
        from app.cli import cli as operator_cli
    except ImportError:  # a teammate's install: the client and CLI only
        return tuneq
    tuneq.registered_commands.extend(operator_cli.registered_commands)
    tuneq.registered_groups.extend(operator_cli.registered_groups)
    operator_names = set(typer.main.get_command(operator_cli).commands)  # type: ignore[attr-defined]

    @tuneq.callback()
    def private_files(ctx: typer.Context) -> None:
        # As app.cli.main does: whatever the service writes (SQLite file, artifacts, the embedded Redis's
        # socket) is its own, 0600 files and 0700 folders (docs/architecture.md, "Artifacts").
        if ctx.invoked_subcommand in operator_names:
            os.umask(0o077)

    return tuneq


def main() -> None:
    build_app()()
