"""The state machine on real SQL: claims, fencing, the reaper, one terminal event per job."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from app.db import session_scope
from app.models import Job, JobEvent, utcnow
from app.services import auth, transitions
from app.services.transitions import LeaseLost


@pytest.fixture
def job_id(backend: dict[str, str]) -> str:
    """A queued test job in a fresh team, inserted straight into SQL (no broker involved)."""
    with session_scope() as session:
        team = auth.get_or_create_team(session, f"t-{utcnow().timestamp()}")
        job = Job(team_id=team.id, kind="test", status="queued", spec={}, max_attempts=2, event_seq=1)
        session.add(job)
        session.flush()
        session.add(JobEvent(job_id=job.id, seq=1, type="queued", data={}))
        return job.id


def _claim(job_id: str, owner: str) -> transitions.Claim | None:
    with session_scope() as session:
        return transitions.claim(session, job_id, owner=owner, lease_seconds=3)


def _age_heartbeat(job_id: str, seconds: float) -> None:
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(seconds=seconds)))


def _events(job_id: str) -> list[tuple[int, str, int]]:
    with session_scope() as session:
        rows = session.execute(select(JobEvent.seq, JobEvent.type, JobEvent.attempt)
                               .where(JobEvent.job_id == job_id).order_by(JobEvent.seq)).all()
        return [tuple(r) for r in rows]


def test_only_one_claim_wins_while_the_lease_is_fresh(job_id: str) -> None:
    first = _claim(job_id, "a")
    assert first is not None and first.attempt == 1 and first.token == 1
    assert _claim(job_id, "b") is None


def test_stale_lease_is_taken_over_and_the_old_owner_is_fenced_out(job_id: str) -> None:
    old = _claim(job_id, "a")
    assert old is not None
    _age_heartbeat(job_id, 10)
    new = _claim(job_id, "b")
    assert new is not None and new.token == old.token + 1 and new.attempt == 2

    for write in (
        lambda s: transitions.heartbeat(s, job_id, old.token),
        lambda s: transitions.fenced_update(s, job_id, old.token, {"progress": {"done": 9}}),
        lambda s: transitions.finish(s, job_id, old.token, "succeeded", result={"from": "a"}),
    ):
        with pytest.raises(LeaseLost), session_scope() as session:
            write(session)

    with session_scope() as session:
        transitions.finish(session, job_id, new.token, "succeeded", result={"from": "b"})
        job = session.get(Job, job_id)
        assert job is not None and job.result == {"from": "b"} and job.progress is None
    assert [t for _, t, _ in _events(job_id)] == ["queued", "running", "running", "succeeded"]


def test_terminal_state_is_recorded_once(job_id: str) -> None:
    claim = _claim(job_id, "a")
    assert claim is not None
    with session_scope() as session:
        transitions.finish(session, job_id, claim.token, "failed", error={"code": "x"})
    with pytest.raises(LeaseLost), session_scope() as session:
        transitions.finish(session, job_id, claim.token, "succeeded")
    assert [t for _, t, _ in _events(job_id)].count("failed") == 1
    assert _claim(job_id, "b") is None


def test_reaper_requeues_stale_jobs_then_gives_up_after_max_attempts(job_id: str) -> None:
    assert _claim(job_id, "a") is not None
    _age_heartbeat(job_id, 10)
    with session_scope() as session:
        assert (job_id, "test") in transitions.reap(session, lease_seconds=3, requeue_after_seconds=60)
        assert session.get(Job, job_id).status == "queued"  # type: ignore[union-attr]
    assert _claim(job_id, "b") is not None  # attempt 2 of 2
    _age_heartbeat(job_id, 10)
    with session_scope() as session:
        assert (job_id, "test") not in transitions.reap(session, lease_seconds=3, requeue_after_seconds=60)
        job = session.get(Job, job_id)
        assert job is not None and job.status == "failed" and job.error is not None
        assert job.error["code"] == "worker_lost" and "2 attempts" in job.error["message"]
    types = [t for _, t, _ in _events(job_id)]
    assert types == ["queued", "running", "requeued", "running", "failed"]


def test_reaper_resends_wakeups_for_unclaimed_jobs(job_id: str) -> None:
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow() - timedelta(seconds=120)))
    with session_scope() as session:
        assert (job_id, "test") in transitions.reap(session, lease_seconds=3, requeue_after_seconds=60)
    with session_scope() as session:  # just re-sent: not again until the grace period passes
        assert (job_id, "test") not in transitions.reap(session, lease_seconds=3, requeue_after_seconds=60)


def test_cancel_of_a_queued_job_is_immediate_and_final(job_id: str) -> None:
    with session_scope() as session:
        transitions.request_cancel(session, job_id)
    assert _claim(job_id, "a") is None
    assert [t for _, t, _ in _events(job_id)] == ["queued", "cancelled"]


def test_transitions_through_run_statement_survive_a_dropped_sql_connection(job_id: str) -> None:
    """The worker's claim/finish path skips the pre-ping; a connection the server dropped is replaced."""
    from sqlalchemy import text

    from app.db import get_engine, run_statement

    if get_engine().dialect.name != "postgresql":
        pytest.skip("autocommit without pre-ping is the PostgreSQL path; SQLite uses plain transactions")
    pid = run_statement(lambda db: db.execute(text("SELECT pg_backend_pid()")).scalar())
    with session_scope() as session:  # what a PostgreSQL restart or an idle timeout does to it
        assert session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
    claim = run_statement(lambda db: transitions.claim(db, job_id, owner="w1", lease_seconds=3))
    assert claim is not None and claim.attempt == 1
    run_statement(lambda db: transitions.finish(db, job_id, claim.token, "succeeded", result={}))
    assert [t for _, t, _ in _events(job_id)] == ["queued", "running", "succeeded"]
