"""The CLI tests run `tuneq` in-process (typer's CliRunner) against the live stack, logged in through the
environment with a fresh team's key, and with a private config dir so no real login is read or written."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner, Result

from tuneq.cli import build_app


class Tuneq:
    """`tuneq(...)` runs one command and returns click's Result (exit_code, stdout, stderr, output)."""

    def __init__(self) -> None:
        self.app, self.runner = build_app(), CliRunner()

    def __call__(self, *args: str, input: str | None = None) -> Result:
        return self.runner.invoke(self.app, list(args), input=input)


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("TUNEQ_URL", raising=False)
    monkeypatch.delenv("TUNEQ_API_KEY", raising=False)
    return tmp_path / "config"


@pytest.fixture
def api_key(client: httpx.Client) -> str:
    return client.headers["Authorization"].removeprefix("Bearer ")


@pytest.fixture
def tuneq(client: httpx.Client, api_key: str, config_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tuneq]:
    monkeypatch.setenv("TUNEQ_URL", str(client.base_url).rstrip("/"))
    monkeypatch.setenv("TUNEQ_API_KEY", api_key)
    yield Tuneq()
