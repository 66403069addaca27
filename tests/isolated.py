"""A stack of its own: its own database, its own Redis, its own API and workers.

For tests that must not share the session's backend: the session stack's reaper and worker would otherwise
run their jobs (a fuzzer's jobs can be long), and their rows, keys and logs would mix with ours. On PostgreSQL
the database is the test database's name plus a suffix, created afresh; otherwise a SQLite file."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support import Stack, free_port, start_redis_server


@dataclass
class Isolated:
    stack: Stack
    database_url: str
    broker_url: str
    var: Path
    logs: Path
    tinker_state: Path

    def create_key(self, rate_limit: str | None = None) -> str:
        """A fresh team's API key (plain), written straight to this stack's database."""
        import uuid

        from sqlalchemy.orm import Session

        from app.db import make_engine
        from app.services import auth

        engine = make_engine(self.database_url)
        try:
            with Session(engine) as session:
                team = auth.get_or_create_team(session, f"team-{uuid.uuid4().hex[:10]}")
                _, plain = auth.create_key(session, team_id=team.id, rate_limit=rate_limit)
                session.commit()
        finally:
            engine.dispose()
        return plain


def _database(tmp: Path, suffix: str) -> str:
    base = os.environ.get("TUNEQ_TEST_DATABASE_URL", "")
    if not base.startswith("postgresql"):
        return f"sqlite:///{tmp / 'var' / 'tuneq.db'}"
    import psycopg

    server, name = base.rsplit("/", 1)
    name = f"{name.split('?')[0]}_{suffix}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


@contextmanager
def isolated_stack(tmp: Path, suffix: str, env: dict[str, str], tinker: dict | None = None) -> Iterator[Isolated]:
    """Migrated SQL, a Redis and a started API (no worker: call `.stack.start_worker()`), all stopped at exit.
    `env` is laid over the session's test settings; `tinker` is the fake Tinker's config (tests/fakes)."""
    from app.migrate import upgrade

    var, logs, tinker_state = tmp / "var", tmp / "logs", tmp / "tinker"
    for d in (var / "datasets", logs, tinker_state):
        d.mkdir(parents=True, exist_ok=True)
    database_url = _database(tmp, suffix)
    port = free_port()
    redis_proc: subprocess.Popen[bytes] = start_redis_server(port, tmp / "redis")
    broker_url = f"redis://127.0.0.1:{port}/0"
    full_env = {**os.environ, "TUNEQ_DATABASE_URL": database_url, "TUNEQ_BROKER_URL": broker_url,
                "TUNEQ_VAR_DIR": str(var), "TUNEQ_LOCAL_DATASETS_DIR": str(var / "datasets"),
                "TUNEQ_TINKER_FAKE": "tests.fakes.tinker_fake:make_fake_service_client",
                "TUNEQ_TINKER_FAKE_CONFIG": json.dumps({"state_dir": str(tinker_state), **(tinker or {})}),
                **env}
    try:
        upgrade(database_url)
        stack = Stack(env=full_env, base_url=f"http://127.0.0.1:{free_port()}", logs=logs)
        try:
            stack.start_api()
            yield Isolated(stack, database_url, broker_url, var, logs, tinker_state)
        finally:
            stack.stop()
    finally:
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
