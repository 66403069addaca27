"""tuneq.models is the server's /openapi.json, regenerated: a schema change on either side fails here until
`python -m tuneq.codegen URL > tuneq/models.py` is run. And the client installs without the server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support import ROOT, Stack
from tuneq.codegen import render

ISOLATED = """
import importlib.abc, json, sys
SERVER = ("app", "workers", "fastapi", "sqlalchemy", "celery", "redis")
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in SERVER:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Blocked())
import typer.main
from tuneq.client import Client
from tuneq.cli import build_app
names = [c.name for c in typer.main.get_command(build_app()).commands.values()]
print(json.dumps(sorted(names)))
"""


def test_models_match_the_servers_openapi(stack: Stack) -> None:
    spec = httpx.get(f"{stack.base_url}/openapi.json").raise_for_status().json()

    assert render(spec) == (ROOT / "tuneq" / "models.py").read_text(), (
        "tuneq/models.py is stale: run `make models` (see tuneq/codegen.py)")


def test_client_and_cli_work_without_the_servers_code(tmp_path: Path) -> None:
    """A teammate's install: no app/, no workers/, none of the server's dependencies. The teammates' commands
    are all there; the operator commands are left out rather than failing."""
    done = subprocess.run([sys.executable, "-c", ISOLATED], cwd=ROOT, capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    commands = json.loads(done.stdout)
    assert {"login", "submit", "jobs", "files", "artifacts", "chat"} <= set(commands)
    assert not {"api", "worker", "migrate", "run", "keys"} & set(commands)


def test_with_the_server_installed_the_operator_commands_join_in() -> None:
    import typer.main

    from tuneq.cli import build_app

    commands = set(typer.main.get_command(build_app()).commands)  # type: ignore[attr-defined]
    assert {"submit", "jobs", "api", "worker", "migrate", "run", "keys"} <= commands


def test_operator_commands_keep_their_private_umask(backend: dict[str, str]) -> None:
    """`tuneq migrate` (and the other operator commands) create the service's files 0600, as app.cli.main does;
    the teammates' commands leave the user's umask alone."""
    from tests.cli.conftest import Tuneq

    before = os.umask(0o022)
    try:
        migrated = Tuneq()("migrate")
        during = os.umask(0o022)
        listed = Tuneq()("jobs", "--help")
        after = os.umask(0o022)
    finally:
        os.umask(before)

    assert migrated.exit_code == 0, migrated.output
    assert during == 0o077 and after == 0o022
    assert listed.exit_code == 0
