"""Retention of failed and cancelled jobs' outputs (app/services/retention.py), on real SQL and real files."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from app.db import session_scope
from app.models import Artifact, Job, Lock, utcnow
from app.services import artifacts, auth, retention
from app.settings import get_settings
from tests.support import Stack

DAYS = 7.0


@pytest.fixture
def sweeps_held(backend: dict[str, str]) -> Iterator[None]:
    """No background sweep (the reapers of a running stack) while the test sweeps by hand."""
    with session_scope() as session:
        before = session.scalar(select(Lock.expires_at).where(Lock.name == retention.RETENTION_LOCK))
        session.execute(update(Lock).where(Lock.name == retention.RETENTION_LOCK)
                        .values(holder="tests", expires_at=utcnow() + timedelta(hours=1)))
    yield
    with session_scope() as session:
        session.execute(update(Lock).where(Lock.name == retention.RETENTION_LOCK)
                        .values(holder=None, expires_at=before))


def _team() -> str:
    with session_scope() as session:
        return auth.get_or_create_team(session, f"retention-{time.time_ns()}").id


def _job(team_id: str, status: str, ended_days_ago: float | None, *, spec: dict[str, Any] | None = None,
         lease_token: int = 1) -> str:
    finished = utcnow() - timedelta(days=ended_days_ago) if ended_days_ago is not None else None
    with session_scope() as session:
        job = Job(team_id=team_id, kind="dataset", status=status, spec=spec or {}, labels={"run": "r"},
                  lease_token=lease_token, finished_at=finished, created_at=utcnow() - timedelta(days=30))
        session.add(job)
        session.flush()
        return job.id


def _file(relpath: str, data: bytes = b'{"x": 1}\n') -> Path:
    writer = artifacts.AtomicWriter(relpath)
    writer.write(data)
    writer.commit()
    return writer.path


def _output(team_id: str, job_id: str, name: str = "train.jsonl", token: int = 1) -> tuple[str, Path]:
    writer = artifacts.AtomicWriter(artifacts.attempt_path(team_id, job_id, token, name))
    writer.write(b'{"messages": []}\n')
    writer.commit()
    with session_scope() as session:
        artifact_id = artifacts.register(session, team_id=team_id, job_id=job_id, kind="dataset", name=name,
                                         writer=writer, fmt="chatml_jsonl", rows=1)
    return artifact_id, writer.path


def _upload(team_id: str) -> tuple[str, Path]:
    artifact_id, writer = artifacts.begin_upload(team_id, "jsonl")
    artifacts.write_chunk(writer, b'{"x": 1}\n', 1 << 20)
    with session_scope() as session:
        artifacts.finish_upload(session, team_id=team_id, artifact_id=artifact_id, name="keep.jsonl", fmt="jsonl",
                                writer=writer)
    return artifact_id, writer.path


def _exists(artifact_id: str) -> bool:
    with session_scope() as session:
        return session.scalar(select(Artifact.id).where(Artifact.id == artifact_id)) is not None


def test_old_outputs_of_failed_and_cancelled_jobs_go_with_their_files(sweeps_held: None) -> None:
    team = _team()
    failed = _job(team, "failed", 8, lease_token=2)
    failed_out, failed_path = _output(team, failed, token=2)
    partial = _file(f"{team}/{failed}/attempt-1/.train.jsonl.0123.tmp")  # a failed attempt's partial file
    staging = _file(f"{team}/{failed}/.staging.jsonl")
    old = time.time() - 9 * 86400
    os.utime(staging, (old, old))
    cancelled = _job(team, "cancelled", 8)
    cancelled_out, cancelled_path = _output(team, cancelled, "samples.jsonl")
    nothing_registered = _job(team, "failed", 10)
    leftover = _file(f"{team}/{nothing_registered}/attempt-1/generated.jsonl")

    done = retention.sweep(days=DAYS)

    assert done["artifacts"] >= 2
    for artifact_id, path in ((failed_out, failed_path), (cancelled_out, cancelled_path)):
        assert not _exists(artifact_id) and not path.exists()
    assert not partial.exists() and not staging.exists() and not leftover.exists()
    for job_id in (failed, cancelled, nothing_registered):  # nothing of theirs is left on disk
        assert not artifacts.local_path(f"{team}/{job_id}").exists()
    assert artifacts.local_path(team).is_dir()


def test_uploads_recent_failures_and_succeeded_outputs_are_kept(sweeps_held: None) -> None:
    team = _team()
    upload_id, upload_path = _upload(team)
    with session_scope() as session:  # even an old upload stays: retention is for failed jobs' outputs only
        session.execute(update(Artifact).where(Artifact.id == upload_id)
                        .values(created_at=utcnow() - timedelta(days=400)))
    recent = _job(team, "failed", 1)
    recent_out, recent_path = _output(team, recent)
    succeeded = _job(team, "succeeded", 30, lease_token=3)
    succeeded_out, succeeded_path = _output(team, succeeded, token=3)
    earlier_attempt = _file(f"{team}/{succeeded}/attempt-2/train.jsonl")  # a crash kept an earlier attempt
    running = _job(team, "running", None, lease_token=4)
    running_file = _file(f"{team}/{running}/attempt-4/train.jsonl")

    retention.sweep(days=DAYS)

    for artifact_id, path in ((upload_id, upload_path), (recent_out, recent_path),
                              (succeeded_out, succeeded_path)):
        assert _exists(artifact_id) and path.is_file()
    assert not earlier_attempt.exists()  # no row points at it
    assert running_file.is_file()


def test_an_output_used_by_an_unfinished_job_is_kept_until_that_job_ends(sweeps_held: None,
                                                                        reaper_paused: None) -> None:
    team = _team()
    failed = _job(team, "failed", 8)
    used, used_path = _output(team, failed, "generated.jsonl")
    unused, unused_path = _output(team, failed, "rejected.jsonl")
    pending = _job(team, "pending", None, spec={"source": {"type": "artifact", "artifact_id": used}})

    retention.sweep(days=DAYS)

    assert _exists(used) and used_path.is_file()
    assert not _exists(unused) and not unused_path.exists()
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == pending).values(status="cancelled", finished_at=utcnow()))
    retention.sweep(days=DAYS)
    assert not _exists(used) and not used_path.exists()
    assert not artifacts.local_path(f"{team}/{failed}").exists()


def test_a_newer_attempt_than_the_swept_jobs_lease_is_left_alone(sweeps_held: None) -> None:
    """The job was resumed and claimed after the sweep read it: that run's folder is not the sweep's."""
    team = _team()
    failed = _job(team, "failed", 8, lease_token=1)
    newer = _file(f"{team}/{failed}/attempt-2/train.jsonl")
    retention.sweep(days=DAYS)
    assert newer.is_file()


def test_the_sweep_runs_once_per_interval_and_not_at_all_when_retention_is_off(sweeps_held: None) -> None:
    team = _team()
    failed = _job(team, "failed", 8)
    out, path = _output(team, failed)
    schedule = f"retention-test-{time.time_ns()}"  # its own schedule row: a running stack's reapers use theirs
    with session_scope() as session:
        session.add(Lock(name=schedule))
    off = get_settings().model_copy(update={"failed_output_retention_days": 0.0})
    assert retention.run_if_due(off, "tests", schedule) is None
    assert _exists(out) and path.is_file()
    on = get_settings().model_copy(update={"failed_output_retention_days": DAYS, "retention_sweep_seconds": 3600})
    done = retention.run_if_due(on, "tests", schedule)
    assert done is not None and done["artifacts"] >= 1
    assert not _exists(out) and not path.exists()
    again = _output(team, _job(team, "failed", 8))
    assert retention.run_if_due(on, "tests", schedule) is None  # not due again for an hour, in any process
    assert _exists(again[0])


def test_the_reaper_thread_sweeps_in_the_background(stack: Stack) -> None:
    """The API and worker processes of a running stack sweep when the shared schedule says it is due."""
    team = _team()
    failed = _job(team, "failed", 8)
    out, path = _output(team, failed)
    with session_scope() as session:
        session.execute(update(Lock).where(Lock.name == retention.RETENTION_LOCK).values(expires_at=None))
    for _ in range(300):
        if not path.exists():
            break
        time.sleep(0.1)
    assert not path.exists() and not _exists(out)
    with session_scope() as session:
        next_sweep = session.scalar(select(Lock.expires_at).where(Lock.name == retention.RETENTION_LOCK))
    assert next_sweep is not None and next_sweep > utcnow()
