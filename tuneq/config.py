"""Where the CLI finds the service: env TUNEQ_URL / TUNEQ_API_KEY, else the file `tuneq login` wrote."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import typer


@dataclass(frozen=True)
class Login:
    url: str
    api_key: str


def config_path() -> Path:
    """config.json in the user's config dir (~/.config/tuneq on Linux, honouring XDG_CONFIG_HOME)."""
    return Path(typer.get_app_dir("tuneq")) / "config.json"


def save(login: Login) -> Path:
    """Write the file readable by its owner only (0600): it holds an API key."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": login.url, "api_key": login.api_key}, f)
    os.chmod(path, 0o600)  # an older file may have been created with wider permissions
    return path


def load() -> Login | None:
    """The login to use, each field from the environment first; None when no URL or key is known."""
    stored: dict[str, str] = {}
    path = config_path()
    if path.exists():
        stored = json.loads(path.read_text())
    url = os.environ.get("TUNEQ_URL") or stored.get("url", "")
    key = os.environ.get("TUNEQ_API_KEY") or stored.get("api_key", "")
    return Login(url, key) if url and key else None
