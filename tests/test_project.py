"""The production compose file stays consistent with the code it runs."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from app.cli import cli
from app.queue import QUEUES

ROOT = Path(__file__).resolve().parent.parent


def test_compose_services_are_consistent() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "api", "flower", "migrate"} <= set(services)
    assert "noeviction" in services["redis"]["command"] and "--appendonly" in services["redis"]["command"]
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
    worker_queues = {s["command"][s["command"].index("--queues") + 1]
                     for n, s in services.items() if n.startswith("worker-")}
    assert worker_queues == set(QUEUES) - {"test"}


def test_compose_commands_are_real_cli_commands() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    runner = CliRunner()
    for name, service in compose["services"].items():
        command = service.get("command")
        if isinstance(command, list) and command[0] == "tuneq":
            result = runner.invoke(cli, [*command[1:2], "--help"])
            assert result.exit_code == 0, (name, result.output)
            for option in (c for c in command[2:] if c.startswith("--")):
                assert option in result.output, (name, option)


def test_app_never_imports_workers() -> None:
    """Imports run one way, workers → app (docs/architecture.md, "Parts"): the API sends tasks by name."""
    import ast

    offenders = []
    for path in (ROOT / "app").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "workers"]
    assert offenders == []
