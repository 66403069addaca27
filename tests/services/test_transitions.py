"""The state machine on real SQL: claims, fencing, the reaper, one terminal event per job."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from app.db import run_statement, session_scope
from app.models import Job, JobEvent, utcnow
from app.services import auth, dependencies, reaper, transitions
from app.services.transitions import LeaseLost


@pytest.fixture
def job_id(reaper_paused: None) -> str:
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
    # A lost worker is a preemption: the same attempt resumes.
    assert new is not None and new.token == old.token + 1 and new.attempt == 1 and new.preemptions == 1

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


def _reap(**options: Any) -> list[tuple[str, str, bool]]:
    with session_scope() as session:
        return reaper.reap(session, **{"lease_seconds": 3, "requeue_after_seconds": 60,
                                            "max_preemptions": 2, **options})


def test_reaper_requeues_stale_jobs_without_spending_attempts_then_gives_up_after_max_preemptions(
    job_id: str,
) -> None:
    assert _claim(job_id, "a") is not None
    _age_heartbeat(job_id, 10)
    assert (job_id, "test", True) in _reap()  # a resumed wake-up: it goes before new jobs
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "queued" and job.preemptions == 1 and job.attempt == 1
    for owner in ("b", "c"):
        again = _claim(job_id, owner)
        assert again is not None and again.attempt == 1  # still attempt 1 of 2
        _age_heartbeat(job_id, 10)
        if owner == "b":
            assert (job_id, "test", True) in _reap()  # the second of max_preemptions=2
    assert (job_id, "test", True) not in _reap()
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "failed" and job.error is not None
        assert job.error["code"] == "too_many_preemptions" and "resume" in job.error["message"]
        assert job.attempt == 1
    types = [t for _, t, _ in _events(job_id)]
    assert types == ["queued", "running", "preempted", "running", "preempted", "running", "failed"]


def test_a_heartbeat_that_lands_after_the_reaper_read_the_job_keeps_it(job_id: str) -> None:
    """The reaper re-checks staleness in its UPDATE: a late heartbeat between its read and its write wins."""
    claim = _claim(job_id, "a")
    assert claim is not None
    _age_heartbeat(job_id, 10)

    class HeartbeatAfterFirstRead:
        def __init__(self, conn: Any) -> None:
            self.conn, self.dialect, self.fired = conn, conn.dialect, False

        def execute(self, *args: Any, **kwargs: Any) -> Any:
            result = self.conn.execute(*args, **kwargs)
            if self.fired:
                return result
            self.fired = True
            rows = result.all()  # the reaper has read the stale job; now the worker's heartbeat lands
            run_statement(lambda db: transitions.heartbeat(db, job_id, claim.token))
            return type("Rows", (), {"all": lambda _self: rows})()

    with session_scope() as session:
        wakeups = reaper.reap(HeartbeatAfterFirstRead(session.connection()), lease_seconds=3,  # type: ignore[arg-type]
                                   requeue_after_seconds=60, max_preemptions=5)
    assert (job_id, "test", True) not in wakeups
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "running" and job.lease_token == claim.token
    # The worker still owns it and can finish.
    run_statement(lambda db: transitions.finish(db, job_id, claim.token, "succeeded", result={}))


def test_a_retry_waits_for_its_backoff_before_it_can_be_claimed_or_sent(job_id: str) -> None:
    claim = _claim(job_id, "a")
    assert claim is not None
    with session_scope() as session:
        assert transitions.retry_later(session, job_id, claim.token, {"code": "x"}, delay_seconds=30)
    assert _claim(job_id, "b") is None  # not due yet
    assert (job_id, "test", True) not in _reap()
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(not_before=utcnow() - timedelta(seconds=1)))
    assert (job_id, "test", True) in _reap()
    again = _claim(job_id, "b")
    assert again is not None and again.attempt == 2  # the job's own failure spent an attempt


def test_hand_back_resumes_the_same_attempt(job_id: str) -> None:
    claim = _claim(job_id, "a")
    assert claim is not None
    with session_scope() as session:
        assert transitions.hand_back(session, job_id, claim.token, reason="shutdown", max_preemptions=5)
    again = _claim(job_id, "b")
    assert again is not None and again.attempt == 1 and again.preemptions == 1
    events = _events(job_id)
    assert [t for _, t, _ in events] == ["queued", "running", "preempted", "running"]


def test_reaper_resends_wakeups_only_for_kinds_it_is_told_are_lost(job_id: str) -> None:
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow() - timedelta(seconds=120)))
    assert (job_id, "test", False) not in _reap()  # the broker still holds a wake-up for it
    assert (job_id, "test", False) in _reap(resend={"test": 1})
    # just re-sent: not again until the grace period passes
    assert (job_id, "test", False) not in _reap(resend={"test": 1})
    assert (job_id, "test", False) in _reap(resend_all=True)  # the broker restarted: its queues are gone


def test_a_ready_pending_job_is_released_even_behind_600_waiting_ones(reaper_paused: None) -> None:
    now = utcnow()
    with session_scope() as session:
        team = auth.get_or_create_team(session, f"t-{now.timestamp()}")
        blocker = Job(team_id=team.id, kind="test", status="running", spec={}, event_seq=0)
        done = Job(team_id=team.id, kind="test", status="succeeded", spec={}, event_seq=0)
        session.add_all([blocker, done])
        session.flush()
        waiting = [Job(team_id=team.id, kind="test", status="pending", spec={}, event_seq=0,
                       depends_on=[blocker.id]) for _ in range(600)]
        session.add_all(waiting)
        session.flush()
        ready = Job(team_id=team.id, kind="test", status="pending", spec={}, event_seq=0, depends_on=[done.id])
        session.add(ready)
        session.flush()
        for job in [*waiting, ready]:
            dependencies.add_dependencies(session, job.id, job.depends_on)
        ready_id = ready.id
    released = _reap()
    assert (ready_id, "test", False) in released
    with session_scope() as session:
        statuses = session.execute(select(Job.status).where(Job.id.in_([j.id for j in waiting]))).scalars().all()
        assert set(statuses) == {"pending"}


def test_one_reaper_at_a_time(reaper_paused: None) -> None:
    """While one holds the reaper lock (here the test itself), no other reaper runs a pass."""
    from app.services.reaper import Reaper, take_reaper_lock

    with session_scope() as session:
        assert not take_reaper_lock(session, "another process", ttl_seconds=30)
    from app.settings import get_settings

    assert Reaper(get_settings()).run_pass() == 0


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


def test_only_the_wakeups_the_broker_no_longer_holds_are_sent_again(reaper_paused: None) -> None:
    """Three jobs waited long; the broker still holds one wake-up (FIFO: the newest's). The two oldest go again."""
    from app.services.reaper import likely_lost

    with session_scope() as session:
        team = auth.get_or_create_team(session, f"t-{utcnow().timestamp()}")
        kind = f"k{uuid.uuid4().hex[:8]}"  # a kind of its own: other tests' jobs do not count
        jobs = [Job(team_id=team.id, kind=kind, status="queued", spec={}, event_seq=0,
                    enqueued_at=utcnow() - timedelta(seconds=120 - i)) for i in range(3)]
        session.add_all(jobs)
        session.flush()
        ids = [j.id for j in jobs]
    with session_scope() as session:
        lost = likely_lost(session, 60, lambda k: 1 if k == kind else 0)
    assert lost[kind] == 2
    with session_scope() as session:
        assert kind not in likely_lost(session, 60, lambda k: 3 if k == kind else 0)  # all still there
    sent = [job_id for job_id, *_ in _reap(resend={kind: lost[kind]})]
    assert [i for i in ids if i in sent] == ids[:2]
