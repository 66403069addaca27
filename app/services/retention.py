"""Retention: the outputs of failed and cancelled jobs go `TUNEQ_FAILED_OUTPUT_RETENTION_DAYS` after the job
ended (docs/architecture.md, "Artifacts").

A sweep (1) deletes the artifact rows of those jobs, then their files — never an artifact that a pending, queued
or running job of the team names, never an upload (no job), never a succeeded job's output — and (2) removes
what attempts left on disk under `<team>/<job>/` of any job that ended before the cutoff: attempt folders no
row points at (a failed attempt's partial files, an earlier attempt a crash kept) and loose work files older
than the job's end. A job resumed meanwhile is safe: the row delete re-checks the job's status in its own
statement, and a resumed run writes only into a newer attempt folder (its lease token is higher than the one
read), which the sweep never touches.

It runs from the reaper's thread (API and workers), at most once per `TUNEQ_RETENTION_SWEEP_SECONDS` across all
processes: the `retention` row of the `lock` table holds the time of the next sweep, and the process that moves
it forward does the sweep.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from app.db import get_engine, session_scope
from app.models import Artifact, Job, Lock, db_now
from app.services.artifact_catalog import ID, UNFINISHED, remove_stored_file
from app.services.artifacts import root
from app.settings import Settings

log = logging.getLogger("tuneq.retention")

RETENTION_LOCK = "retention"
ENDED_BADLY = ("failed", "cancelled")
ENDED = ("succeeded", "failed", "cancelled")
BATCH = 200
_ATTEMPT = re.compile(r"attempt-([0-9]{1,18})")


def run_if_due(settings: Settings, holder: str, schedule: str = RETENTION_LOCK) -> dict[str, int] | None:
    """Sweep when the shared schedule (the `lock` row named `schedule`) says so; None: retention is off, or it
    is not this process's turn."""
    days = settings.failed_output_retention_days
    if not days:
        return None
    due = or_(Lock.expires_at.is_(None), Lock.expires_at < db_now())
    engine = get_engine()
    with engine.connect() as conn:  # a read first: most ticks are not due, and a read takes no write lock
        if conn.scalar(select(Lock.name).where(Lock.name == schedule, due)) is None:
            return None
    with engine.begin() as conn:
        taken = conn.execute(update(Lock).where(Lock.name == schedule, due)
                             .values(holder=holder, expires_at=db_now(settings.retention_sweep_seconds)))
        if not taken.rowcount:
            return None
    done = sweep(days=days)
    if any(done.values()):
        log.info("retention: removed %(artifacts)d artifacts of failed or cancelled jobs and %(folders)d "
                 "leftover attempt folders", done)
    return done


def sweep(*, days: float, batch: int = BATCH) -> dict[str, int]:
    """One sweep for jobs that ended over `days` days ago; how many artifacts and attempt folders it removed."""
    seconds = days * 86400
    return {"artifacts": _sweep_rows(seconds, batch), "folders": _sweep_folders(seconds, batch)}


def _strings(value: Any, out: set[str], depth: int = 0) -> None:
    if depth > 64:
        return
    if isinstance(value, str):
        out.add(value)
    elif isinstance(value, dict):
        for item in value.values():
            _strings(item, out, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _strings(item, out, depth + 1)


def _named_by_unfinished_jobs(session: Session, team_ids: Iterable[str]) -> set[str]:
    """Every text value in the specs of these teams' pending, queued or running jobs (artifact ids among them)."""
    named: set[str] = set()
    for spec in session.scalars(select(Job.spec).where(Job.team_id.in_(list(team_ids)),
                                                       Job.status.in_(UNFINISHED))):
        _strings(spec, named)
    return named


def _sweep_rows(seconds: float, batch: int) -> int:
    """Artifact rows of jobs failed or cancelled before the cutoff, a batch per transaction, keyset by id."""
    removed, last = 0, ""
    while True:
        with session_scope() as session:
            old_bad_jobs = select(Job.id).where(Job.status.in_(ENDED_BADLY), Job.finished_at < db_now(-seconds))
            rows = session.execute(
                select(Artifact.id, Artifact.team_id, Artifact.uri)
                .where(Artifact.job_id.in_(old_bad_jobs), Artifact.id > last)
                .order_by(Artifact.id).limit(batch)
                .with_for_update(of=Artifact, skip_locked=True)  # PostgreSQL: a submission reading it FOR SHARE
            ).all()                                                # is waited for by the next sweep instead
            if not rows:
                return removed
            last = rows[-1].id
            named = _named_by_unfinished_jobs(session, {r.team_id for r in rows})
            doomed = [r for r in rows if r.id not in named]
            if doomed:
                # The job is checked again in this statement: a job resumed since the read keeps its outputs.
                gone = session.execute(delete(Artifact).where(Artifact.id.in_([r.id for r in doomed]),
                                                              Artifact.job_id.in_(old_bad_jobs))
                                       .returning(Artifact.id, Artifact.uri)).all()
                uris = {r.uri for r in gone}
                shared = set(session.scalars(select(Artifact.uri).where(Artifact.uri.in_(uris)))) if uris else set()
                session.commit()
                for uri in uris - shared:
                    remove_stored_file(uri)
                removed += len(gone)
            if len(rows) < batch:
                return removed


def _job_folders(base: Path) -> list[tuple[str, str, Path]]:
    """(team id, job id, folder) of every `<team>/<job>/` folder in the store (uploads live in `file_…`)."""
    found = []
    for team_dir in base.iterdir() if base.is_dir() else ():
        if team_dir.is_symlink() or not team_dir.is_dir():
            continue
        for job_dir in team_dir.iterdir():
            if job_dir.name.startswith("job_") and ID.fullmatch(job_dir.name) and not job_dir.is_symlink() \
                    and job_dir.is_dir():
                found.append((team_dir.name, job_dir.name, job_dir))
    return found


def _sweep_folders(seconds: float, batch: int) -> int:
    """What attempts of jobs ended before the cutoff left on disk that no artifact row points at."""
    base = root()
    folders = _job_folders(base)
    removed = 0
    for start in range(0, len(folders), batch):
        chunk = folders[start:start + batch]
        with session_scope() as session:
            jobs = {r.id: r for r in session.execute(
                select(Job.id, Job.team_id, Job.lease_token, Job.finished_at)
                .where(Job.id.in_([job_id for _, job_id, _ in chunk]), Job.status.in_(ENDED),
                       Job.finished_at < db_now(-seconds)))}
            kept = set(session.scalars(select(Artifact.uri).where(Artifact.job_id.in_(list(jobs))))) if jobs \
                else set()
        for team_id, job_id, folder in chunk:
            job = jobs.get(job_id)
            if job is not None and job.team_id == team_id:
                removed += _clean_job_folder(base, folder, job.lease_token, job.finished_at.timestamp(), kept)
    return removed


def _clean_job_folder(base: Path, folder: Path, lease_token: int, finished_at: float, kept: set[str]) -> int:
    removed = 0
    for child in list(folder.iterdir()):
        if child.is_symlink():
            continue
        attempt = _ATTEMPT.fullmatch(child.name)
        if attempt and child.is_dir():
            if int(attempt.group(1)) > lease_token:
                continue  # a run after the job was resumed: not ours to touch
            prefix = child.relative_to(base).as_posix() + "/"
            if any(uri.startswith(prefix) for uri in kept):
                for tmp in child.glob(".*.tmp"):  # a crashed writer's temp file beside registered outputs
                    tmp.unlink(missing_ok=True)
                continue
            shutil.rmtree(child, ignore_errors=True)
            removed += 1
        elif child.is_file() and child.stat().st_mtime < finished_at:
            child.unlink(missing_ok=True)  # a work file of a run that ended (a resumed run writes newer ones)
    try:
        folder.rmdir()  # only when empty
    except OSError:
        pass
    return removed
