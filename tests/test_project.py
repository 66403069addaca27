"""Project-level promises: the production compose file stays consistent with the code it runs; settings names."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
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
    worker_queues = {queue for n, s in services.items() if n.startswith("worker-")
                     for queue in s["command"][s["command"].index("--queues") + 1].split(",")}
    assert worker_queues == set(QUEUES) - {"test"}  # every kind has a worker (one may serve several)


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


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total, number = 0.0, ""
    for part in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration):
        number, unit = part
        total += float(number) * units[unit]
    assert number, f"cannot read the duration {duration!r}"
    return total


def _workers(compose: dict) -> dict[str, dict]:
    return {n: s for n, s in compose["services"].items() if n.startswith("worker-")}


def test_compose_deployment_is_hardened() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    # Flower: never published beyond loopback; basic auth comes from the environment.
    flower = services["flower"]
    for port in flower.get("ports", []):
        assert str(port).startswith("127.0.0.1:"), f"flower publishes {port} on every interface"
    assert "FLOWER_BASIC_AUTH" in flower.get("environment", {})
    assert _workers(compose)
    for name, service in _workers(compose).items():
        env = service["environment"]
        grace = float(env["TUNEQ_SHUTDOWN_GRACE_SECONDS"])
        assert _seconds(service["stop_grace_period"]) > grace, name
        check = " ".join(service["healthcheck"]["test"])
        assert "TUNEQ_WORKER_HEALTH_FILE" in check and env["TUNEQ_WORKER_HEALTH_FILE"], name
        assert "inspect" not in check and " ping" not in check, f"{name}: its healthcheck needs remote control"


def test_image_runs_as_a_non_root_user() -> None:
    lines = [line.split() for line in (ROOT / "Dockerfile").read_text().splitlines() if line.strip()]
    users = [words[1] for words in lines if words[0] == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image runs as root"
    text = (ROOT / "Dockerfile").read_text()
    assert "useradd" in text and f"chown -R {users[-1]}" in text  # it owns its var dir and artifact store


def test_nothing_that_relays_worker_control_is_published() -> None:
    """Workers keep Celery's remote control (workers/celery_app.py): Redis, which carries its commands, is not
    published at all, and Flower, which sends them, only on loopback."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert not services["redis"].get("ports") and not services["postgres"].get("ports")
    assert all(str(p).startswith("127.0.0.1:") for p in services["flower"].get("ports", []))


def test_worker_health_file_follows_the_worker(backend: dict[str, str], tmp_path: Path) -> None:
    """A real worker touches the file while it serves its queues and removes it when it stops; the compose
    healthcheck (run here as written) passes on a fresh file and fails on a missing one."""
    import os
    import subprocess

    from tests.support import Stack, free_port, wait_until

    health = tmp_path / "worker.alive"
    env = {**os.environ, **backend, "TUNEQ_WORKER_HEALTH_FILE": str(health), "TUNEQ_RUN_REAPER": "0"}
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    check = next(iter(_workers(compose).values()))["healthcheck"]["test"]
    assert check[0] == "CMD" and check[1] == "python"

    def healthcheck() -> int:
        return subprocess.run([sys.executable, *check[2:]], env=env, timeout=30, capture_output=True).returncode

    stack = Stack(env=env, base_url=f"http://127.0.0.1:{free_port()}", logs=tmp_path)
    stack.start_worker(concurrency=1, queues="test")
    try:
        wait_until(health.exists, 30, "the worker to write its health file")
        first = health.stat().st_mtime
        wait_until(lambda: health.stat().st_mtime > first, 30, "the worker to touch its health file again")
        assert healthcheck() == 0
    finally:
        stack.stop_workers()
    assert not health.exists()
    assert healthcheck() != 0


def test_the_scripts_tinker_api_base_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """TINKER_API_BASE, as the training scripts this service replaces name it, sets the Tinker URL too."""
    from app.settings import Settings

    monkeypatch.delenv("TUNEQ_TINKER_BASE_URL", raising=False)
    monkeypatch.setenv("TINKER_API_BASE", "http://tinker.internal:8080")
    assert Settings().tinker_base_url == "http://tinker.internal:8080"
    monkeypatch.setenv("TUNEQ_TINKER_BASE_URL", "http://ours:9000")  # our own name wins when both are set
    assert Settings().tinker_base_url == "http://ours:9000"
