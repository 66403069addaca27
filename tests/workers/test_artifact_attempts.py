"""Outputs per attempt: an old attempt that wakes up after another took its job over can neither replace nor
register files; the winner's files are what the job's artifacts point at."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from app.db import run_statement, session_scope
from app.models import Artifact, Job, utcnow
from app.services import artifacts as artifacts_service
from app.services import auth, transitions
from app.services.transitions import LeaseLost
from app.settings import get_settings
from workers.lease import JobContext


def _claim(job_id: str, owner: str) -> transitions.Claim:
    claim = run_statement(lambda db: transitions.claim(db, job_id, owner=owner, lease_seconds=3))
    assert claim is not None
    return claim


def _output(writer: artifacts_service.AtomicWriter) -> dict:
    return {"kind": "dataset", "name": "train.jsonl", "writer": writer, "fmt": "jsonl", "rows": 1, "meta": {}}


def test_a_paused_old_attempt_renaming_after_the_winner_changes_nothing(reaper_paused: None) -> None:
    with session_scope() as session:
        team = auth.get_or_create_team(session, f"attempts-{utcnow().timestamp()}")
        job = Job(team_id=team.id, kind="test", status="queued", spec={}, event_seq=0)
        session.add(job)
        session.flush()
        job_id = job.id
    settings = get_settings()
    old = JobContext(_claim(job_id, "old"), settings)
    old_writer = old.artifact_writer("train.jsonl")
    old_writer.write(b'{"from": "old"}\n')  # ... and then the old worker is paused

    with session_scope() as session:  # its lease goes stale; another worker takes the job over
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(seconds=60)))
    new = JobContext(_claim(job_id, "new"), settings)
    new_writer = new.artifact_writer("train.jsonl")
    winner = b'{"from": "new"}\n'
    new_writer.write(winner)
    new_writer.commit()
    [artifact_id] = new.publish_artifacts([_output(new_writer)])

    # The old worker wakes up: its rename cannot land on the winner's file, and it cannot register anything.
    try:
        old_writer.commit()
    except FileNotFoundError:
        pass  # its attempt folder was already cleaned up
    with pytest.raises(LeaseLost):
        old.publish_artifacts([_output(old_writer)])

    with session_scope() as session:
        path, meta = artifacts_service.path_of(session, team_id=old.team_id, artifact_id=artifact_id)
        rows = session.execute(select(Artifact.id).where(Artifact.job_id == job_id)).scalars().all()
    assert rows == [artifact_id]
    assert path.read_bytes() == winner and meta["sha256"] == hashlib.sha256(winner).hexdigest()
    job_dir = artifacts_service.local_path(f"{old.team_id}/{job_id}")
    assert sorted(p.name for p in job_dir.iterdir()) == [f"attempt-{new.token}"]
    assert [p.name for p in (job_dir / f"attempt-{new.token}").iterdir()] == ["train.jsonl"]  # no temp files
