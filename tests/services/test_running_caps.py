"""TUNEQ_MAX_RUNNING_PER_TEAM: a team runs at most n jobs of a kind at once; the claim itself refuses more, and
the job over the cap stays queued without spending an attempt or a preemption."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import select

from app.db import session_scope
from app.models import Job, utcnow
from app.services import auth, transitions

pytestmark = pytest.mark.usefixtures("backend", "reaper_paused")


def _team() -> str:
    with session_scope() as session:
        return auth.get_or_create_team(session, f"team-{uuid.uuid4().hex[:8]}").id


def _queued(team_id: str, kind: str = "test") -> str:
    with session_scope() as session:
        job = Job(team_id=team_id, kind=kind, status="queued", spec={}, labels={}, enqueued_at=utcnow())
        session.add(job)
        session.flush()
        return job.id


def _claim(job_id: str, caps: dict[str, int]) -> Any:
    with session_scope() as session:
        return transitions.claim(session, job_id, owner="test-worker", lease_seconds=30, running_caps=caps)


def _row(job_id: str) -> Any:
    with session_scope() as session:
        return session.execute(select(Job.status, Job.attempt, Job.preemptions).where(Job.id == job_id)).one()


def test_a_team_runs_at_most_its_cap_of_a_kind() -> None:
    caps = {"test": 2}
    team, other = _team(), _team()
    jobs = [_queued(team) for _ in range(3)]
    first, second = _claim(jobs[0], caps), _claim(jobs[1], caps)
    assert first is not None and second is not None
    assert _claim(jobs[2], caps) is None  # over the cap: stays queued, nothing spent
    assert tuple(_row(jobs[2])) == ("queued", 0, 0)

    # Other teams and other kinds are not held back.
    assert _claim(_queued(other), caps) is not None
    assert _claim(_queued(team, kind="dataset"), caps) is not None

    # When one ends, the waiting job can be claimed (the reaper sends its wake-up again).
    with session_scope() as session:
        transitions.finish(session, jobs[0], first.token, "succeeded", result={})
    third = _claim(jobs[2], caps)
    assert third is not None and third.attempt == 1 and third.preemptions == 0
    assert tuple(_row(jobs[2])) == ("running", 1, 0)


def test_no_cap_means_no_limit() -> None:
    team = _team()
    jobs = [_queued(team) for _ in range(3)]
    assert all(_claim(j, {}) is not None for j in jobs)
    assert all(_claim(_queued(team), {"dataset": 1}) is not None for _ in range(2))
