"""Database blips while a job runs: the real pipeline, claim and transitions on the real test database, driven
in this process (as a worker process would), with OperationalErrors injected at the SQL driver seam."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import event, select, update
from sqlalchemy.exc import OperationalError

from app.db import get_engine, session_scope
from app.models import Job, JobEvent, utcnow
from app.services import auth, reaper
from app.settings import get_settings
from tests.conftest import OPENROUTER_TEST_KEY
from workers.tasks import drive

SQL_WORDS = re.compile(r"\b(UPDATE|SELECT|INSERT|DELETE|WHERE|RETURNING)\b")


class ServerGone(Exception):
    """What a driver says when the server went away (its text carries the SQL, as drivers' errors do)."""


@contextmanager
def failing_statements(match: Callable[[str], bool], times: int | None) -> Iterator[list[str]]:
    """Make the next `times` statements for which `match(sql)` holds fail as if the server went away
    (None: every one, until the block ends). Yields the statements that failed."""
    failed: list[str] = []
    engine = get_engine()

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if match(statement) and (times is None or len(failed) < times):
            failed.append(statement)
            raise OperationalError(statement, parameters, ServerGone("server closed the connection unexpectedly"))

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield failed
    finally:
        event.remove(engine, "before_cursor_execute", before)


@pytest.fixture
def new_job(reaper_paused: None) -> Callable[..., str]:
    def make(spec: dict[str, Any] | None = None, kind: str = "test") -> str:
        with session_scope() as session:
            team = auth.get_or_create_team(session, f"blips-{utcnow().timestamp()}")
            job = Job(team_id=team.id, kind=kind, status="queued", spec=spec or {}, event_seq=1, max_attempts=2)
            session.add(job)
            session.flush()
            session.add(JobEvent(job_id=job.id, seq=1, type="queued", data={}))
            return job.id
    return make


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give up on an absent database after 1 s instead of a minute."""
    monkeypatch.setattr(get_settings(), "db_retry_seconds", 1.0)


def _job(job_id: str) -> tuple[Job, list[JobEvent]]:
    with session_scope() as session:
        job = session.get(Job, job_id)
        events = session.execute(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)).scalars()
        assert job is not None
        return job, list(events)


def _no_sql_text(job: Job, events: list[JobEvent]) -> None:
    visible = orjson.dumps({"error": job.error, "result": job.result, "events": [e.data for e in events]}).decode()
    assert not SQL_WORDS.search(visible), visible


def _job_update(sql: str) -> str | None:
    """The SET clause of an UPDATE of the job table (alone, or inside PostgreSQL's one-statement CTE)."""
    start = sql.find("UPDATE job SET")
    return sql[start:].split("WHERE")[0] if start >= 0 else None


def _is_progress_write(sql: str) -> bool:
    changes = _job_update(sql)
    return changes is not None and "progress=" in changes and "status=" not in changes


def test_a_blip_mid_pipeline_is_retried_and_the_job_succeeds(new_job: Callable[..., str]) -> None:
    job_id = new_job({"steps": 5})
    with failing_statements(_is_progress_write, times=2) as failed:
        drive(job_id)
    assert len(failed) == 2
    job, events = _job(job_id)
    assert job.status == "succeeded" and job.attempt == 1 and job.preemptions == 0
    assert job.result == {"steps": 5, "attempt": 1}
    _no_sql_text(job, events)


def test_a_blip_at_the_final_finish_does_not_fail_a_job_that_succeeded(new_job: Callable[..., str]) -> None:
    job_id = new_job({"steps": 2})
    with failing_statements(lambda sql: "finished_at=" in (_job_update(sql) or ""), times=3) as failed:
        drive(job_id)
    assert len(failed) == 3
    job, events = _job(job_id)
    assert job.status == "succeeded" and job.error is None
    assert [e.type for e in events].count("succeeded") == 1
    _no_sql_text(job, events)


def test_a_database_that_stays_away_leaves_the_job_to_its_lease_then_it_resumes(
    new_job: Callable[..., str], quick_retries: None
) -> None:
    job_id = new_job({"steps": 3})
    after_claim = lambda sql: "started_at=" not in (_job_update(sql) or "started_at=")  # noqa: E731
    with failing_statements(after_claim, times=None):
        drive(job_id)  # returns: it neither hangs nor records anything
    job, events = _job(job_id)
    assert job.status == "running" and job.error is None
    assert not any(e.type in ("failed", "succeeded") for e in events)

    # The database is back; the lease expires and the reaper hands the job to another worker.
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(minutes=5)))
    with session_scope() as session:
        wakeups = reaper.reap(session, lease_seconds=3, requeue_after_seconds=60, max_preemptions=5)
    assert (job_id, "test", True) in wakeups
    drive(job_id)
    job, events = _job(job_id)
    assert job.status == "succeeded" and job.attempt == 1 and job.preemptions == 1
    _no_sql_text(job, events)


def test_an_unexpected_error_names_a_reference_not_its_text(new_job: Callable[..., str], tmp_path: Path) -> None:
    """A bug fails the job, but the message never carries the exception text (SQL, paths): only a reference."""
    job_id = new_job({"steps": 1})
    secret_path = str(tmp_path / "server" / "only")
    with failing_statements(lambda sql: False, times=0):
        from workers.pipelines import PIPELINES

        original = PIPELINES["test"]

        def buggy(spec: dict[str, Any], ctx: Any) -> dict[str, Any]:
            raise FileNotFoundError(f"[Errno 2] No such file or directory: '{secret_path}'")

        PIPELINES["test"] = buggy
        try:
            drive(job_id)
        finally:
            PIPELINES["test"] = original
    job, events = _job(job_id)
    assert job.status == "failed" and job.error is not None
    assert job.error["code"] == "internal_error" and secret_path not in orjson.dumps(job.error).decode()
    assert job.error["details"]["reference"] in job.error["message"]


def test_a_generation_writer_that_cannot_write_ends_the_pipeline_instead_of_hanging(
    new_job: Callable[..., str], quick_retries: None, fake_openrouter: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydantic import SecretStr

    settings = get_settings()
    monkeypatch.setattr(settings, "openrouter_api_key", SecretStr(OPENROUTER_TEST_KEY))
    monkeypatch.setattr(settings, "openrouter_base_url", fake_openrouter.url)
    job_id = new_job({"preset": "qa", "model": "test/model", "topics": ["fractions"], "per_topic": 40,
                      "concurrency": 4}, kind="generation")
    ran = threading.Thread(target=drive, args=(job_id,), daemon=True)
    with failing_statements(lambda sql: "generation_item" in sql and not sql.startswith("SELECT"), times=None):
        ran.start()
        ran.join(timeout=60)
    assert not ran.is_alive(), "the generation pipeline hung after its writer failed"
    job, events = _job(job_id)
    # Not the job's fault: it was handed back (or left to its lease), never failed, and it can resume.
    assert job.status in ("queued", "running") and job.error is None, job.error
