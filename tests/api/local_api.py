"""A real uvicorn server on loopback running create_app() in a thread of the test process, so a test can look
at the app's own state (its event hub) and count the SQL it runs."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI

from tests.support import free_port, wait_until


@dataclass
class LocalApi:
    app: FastAPI
    base_url: str
    port: int

    @property
    def hub(self) -> Any:
        return self.app.state.event_hub


@contextmanager
def local_api(**overrides: Any) -> Iterator[LocalApi]:
    from app.main import create_app
    from app.settings import get_settings

    settings = get_settings().model_copy(update={"run_reaper": False, **overrides})
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 20, "the local API to start")
        yield LocalApi(app, f"http://127.0.0.1:{port}", port)
    finally:
        server.should_exit = True
        thread.join(20)


def new_key() -> tuple[str, str, str]:
    """(team id, key id, plain key) of a fresh team."""
    from app.db import session_scope
    from app.services import auth

    with session_scope() as session:
        team = auth.get_or_create_team(session, f"team-{uuid.uuid4().hex[:10]}")
        key, plain = auth.create_key(session, team_id=team.id)
        return team.id, key.id, plain
