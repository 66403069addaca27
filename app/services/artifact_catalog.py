"""Finding a team's artifacts again (filtered, cursor-paged lists) and deleting them (row and file).

Listing is newest first with a keyset on (created_at, id): uploads (`file_…`) and job outputs (`art_…`) have
different id prefixes, so ids alone do not sort them by time. The cursor is opaque to clients.

An artifact that a pending, queued or running job of the team names in its spec cannot be deleted (409
naming the jobs): the job would fail when it reaches the missing file (docs/architecture.md, "Artifacts").
Names and labels can be changed (`update_artifact`); labels are filtered like jobs' (`label=name:value`).
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import String, and_, cast, delete, func, or_, select, update
from sqlalchemy.orm import Session

from app.errors import Conflict, InvalidRequest, NotFound
from app.models import Artifact, Job, row_dict
from app.schemas.common import clamp_utc, control_characters
from app.services import artifacts as artifacts_service
from app.services.artifacts import ARTIFACT_COLUMNS, MAX_NAME_BYTES, local_path, root

log = logging.getLogger("tuneq.artifacts")

UNFINISHED = ("pending", "queued", "running")
WORD = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")  # an artifact kind or format, as the store writes them
ID = re.compile(r"[a-z]{1,20}_[0-9a-f]{1,64}")  # a job or artifact id (app.models.new_id)
_EPOCH, _MICRO = datetime(1970, 1, 1, tzinfo=UTC), timedelta(microseconds=1)
_CURSOR = re.compile(r"(-?[0-9]{1,20}):([a-z]{1,20}_[0-9a-f]{1,64})")
MAX_LABELS, MAX_LABEL_CHARS = 50, 200  # as on jobs (app/schemas/jobs.py)


def _bad(field: str, msg: str, detail: str) -> InvalidRequest:
    return InvalidRequest(f"{field}: {detail}", errors=[{"loc": ["query", field], "msg": msg}])


def encode_cursor(created_at: datetime, artifact_id: str) -> str:
    micros = (created_at - _EPOCH) // _MICRO
    return base64.urlsafe_b64encode(f"{micros}:{artifact_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """(created_at, id) of the last row of the previous page; a 422 naming `cursor` for anything else."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        match = _CURSOR.fullmatch(text)
        if match is None:
            raise ValueError(text)
        when = _EPOCH + int(match.group(1)) * _MICRO
    except (ValueError, binascii.Error, UnicodeError, OverflowError):
        raise _bad("cursor", "invalid cursor",
                   "not a cursor this API returned; pass next_cursor from the previous page.") from None
    return clamp_utc(when), match.group(2)


def _word(field: str, value: str) -> str:
    if not WORD.fullmatch(value):
        raise _bad(field, f"not a {field}", f"'{value[:50]!r}' is not an artifact {field}: 1–32 lowercase letters, "
                                            "digits, '_', '-' or '.', e.g. upload, dataset, jsonl.")
    return value


def _name_filter(name: str) -> Any:
    """`name` exact, or a prefix when it ends with `*` (compared case-sensitively on every backend)."""
    prefix = name.endswith("*")
    text = name[:-1] if prefix else name
    if control_characters(name) or len(text.encode("utf-8")) > MAX_NAME_BYTES or (not prefix and not text):
        raise _bad("name", "invalid name", f"give a file name (at most {MAX_NAME_BYTES} bytes of UTF-8, no control "
                                           "characters), or a prefix ending with '*', e.g. train*.")
    if not prefix:
        return Artifact.name == text
    if not text:
        return None  # '*' alone: every name
    return func.substr(Artifact.name, 1, len(text)) == text


def parse_label(text: str, loc: list[str]) -> tuple[str, str]:
    """`name:value` (split at the first ':'), each part 1–200 characters without control characters — the
    syntax and message of GET /v1/jobs?label=."""
    name, sep, value = text.partition(":")
    if (not sep or not name or not value or len(name) > MAX_LABEL_CHARS or len(value) > MAX_LABEL_CHARS
            or control_characters(text)):
        raise InvalidRequest(f"{loc[-1]}: must look like 'name:value', each part 1–200 characters without control "
                             "characters.", errors=[{"loc": loc, "msg": "expected name:value"}])
    return name, value


def parse_labels(texts: list[str], loc: list[str]) -> dict[str, str]:
    """Labels given as repeated `label=name:value` (an upload's); a name given twice or over 50 pairs is a 422."""
    labels: dict[str, str] = {}
    for text in texts:
        name, value = parse_label(text, loc)
        if name in labels:
            raise InvalidRequest(f"{loc[-1]}: label '{name}' is given twice; give each name once.",
                                 errors=[{"loc": loc, "msg": f"duplicate label {name}"}])
        labels[name] = value
    if len(labels) > MAX_LABELS:
        raise InvalidRequest(f"{loc[-1]}: {len(labels)} labels given; at most {MAX_LABELS} are allowed.",
                             errors=[{"loc": loc, "msg": f"more than {MAX_LABELS} labels"}])
    return labels


def list_artifacts(
    session: Session,
    *,
    team_id: str,
    kind: str | None = None,
    job_id: str | None = None,
    name: str | None = None,
    format: str | None = None,
    created_after: datetime | None = None,
    label: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[dict[str, Any]], bool, str | None]:
    """A page of the team's artifacts, newest first. Every filter is checked here, so a bad one is a 422
    naming it, never a database error."""
    if not 1 <= limit <= 200:
        raise _bad("limit", "out of range", "must be between 1 and 200.")
    query = select(*ARTIFACT_COLUMNS).where(Artifact.team_id == team_id)
    if kind is not None:
        query = query.where(Artifact.kind == _word("kind", kind))
    if format is not None:
        query = query.where(Artifact.format == _word("format", format))
    if job_id is not None:
        if not ID.fullmatch(job_id):
            raise _bad("job_id", "not a job id", "not a job id; use an id from GET /v1/jobs.")
        query = query.where(Artifact.job_id == job_id)
    if name is not None:
        condition = _name_filter(name)
        if condition is not None:
            query = query.where(condition)
    if created_after is not None:
        query = query.where(Artifact.created_at > clamp_utc(created_after))
    if label:
        label_name, value = parse_label(label, ["query", "label"])
        query = query.where(Artifact.labels[label_name].as_string() == value)
    if cursor:
        when, last_id = decode_cursor(cursor)
        query = query.where(or_(Artifact.created_at < when,
                                and_(Artifact.created_at == when, Artifact.id < last_id)))
    rows = session.execute(query.order_by(Artifact.created_at.desc(), Artifact.id.desc()).limit(limit + 1)).all()
    has_more = len(rows) > limit
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if has_more else None
    return [row_dict(r, "created_at") for r in page], has_more, next_cursor


def _names(value: Any, artifact_id: str, depth: int = 0) -> bool:
    """Whether `artifact_id` appears as a text value anywhere in a job spec (train_artifact, eval_artifact,
    source.artifact_id, source_artifact, … and any field added later)."""
    if depth > 64:
        return False
    if isinstance(value, str):
        return value == artifact_id
    if isinstance(value, dict):
        return any(_names(v, artifact_id, depth + 1) for v in value.values())
    if isinstance(value, list):
        return any(_names(v, artifact_id, depth + 1) for v in value)
    return False


def jobs_using(session: Session, team_id: str, artifact_id: str) -> list[str]:
    """Ids of the team's pending, queued or running jobs whose spec names the artifact. The database narrows
    the scan with a text match on the spec's JSON (same SQL on SQLite and PostgreSQL); Python confirms."""
    rows = session.execute(
        select(Job.id, Job.spec).where(
            Job.team_id == team_id, Job.status.in_(UNFINISHED),
            cast(Job.spec, String).contains(f'"{artifact_id}"', autoescape=True),
        ).order_by(Job.id)
    ).all()
    return [r.id for r in rows if _names(r.spec, artifact_id)]


def remove_stored_file(uri: str) -> None:
    """The artifact's file, then its folders up to the team's folder while they are empty."""
    base = root()
    path = local_path(uri).resolve()
    if not path.is_relative_to(base):  # uri is written by the server; never leave the store all the same
        log.warning("artifact uri outside the store, file kept: %s", uri)
        return
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:  # the row is gone already; a stray file is only disk space
        log.warning("could not remove artifact file %s: %s", uri, exc)
        return
    folder = path.parent
    team_folder = base / uri.split("/", 1)[0]
    while folder != team_folder and folder.is_relative_to(team_folder):
        try:
            folder.rmdir()  # only when empty
        except OSError:
            break
        folder = folder.parent


def delete_artifact(session: Session, *, team_id: str, artifact_id: str, uploads_only: bool = False) -> None:
    """Delete the row, commit, then its file (a failed commit leaves both). 404 for another team's id (or,
    with `uploads_only`, for a job's output); 409 naming the unfinished jobs that use it."""
    what = "upload" if uploads_only else "artifact"
    if not ID.fullmatch(artifact_id):  # never an id (PostgreSQL cannot even compare text holding NUL)
        raise NotFound(f"No {what} {artifact_id[:100]!r} in your team.")
    query = select(Artifact.kind, Artifact.uri).where(Artifact.id == artifact_id, Artifact.team_id == team_id)
    row = session.execute(query.with_for_update()).first()  # PostgreSQL: a second DELETE waits for this one
    if row is None or (uploads_only and row.kind != "upload"):
        raise NotFound(f"No {what} {artifact_id} in your team.")
    users = jobs_using(session, team_id, artifact_id)
    if users:
        shown = ", ".join(users[:10]) + (f" and {len(users) - 10} more" if len(users) > 10 else "")
        raise Conflict(f"{what.capitalize()} {artifact_id} is used by unfinished jobs of your team: {shown}. "
                       "Wait for them to end or cancel them (POST /v1/jobs/{id}/cancel), then delete it.",
                       errors=[{"loc": ["path", "artifact_id"], "msg": f"used by job {job}"} for job in users[:10]])
    session.execute(delete(Artifact).where(Artifact.id == artifact_id, Artifact.team_id == team_id))
    shared = session.scalar(select(func.count()).select_from(Artifact).where(Artifact.uri == row.uri))
    session.commit()
    if not shared:
        remove_stored_file(row.uri)


def update_artifact(session: Session, *, team_id: str, artifact_id: str, name: str | None = None,
                    labels: dict[str, str | None] | None = None, uploads_only: bool = False) -> dict[str, Any]:
    """Rename and/or relabel (`labels` as a JSON merge patch: null removes a label). The row is locked while
    its labels are merged, so two concurrent patches both apply. 404 for another team's id (or, with
    `uploads_only`, for a job's output)."""
    what = "upload" if uploads_only else "artifact"
    if not ID.fullmatch(artifact_id):
        raise NotFound(f"No {what} {artifact_id[:100]!r} in your team.")
    if name is not None:
        name = artifacts_service.validate_upload_name(name, ("body", "name"))
    query = select(Artifact.kind, Artifact.labels).where(Artifact.id == artifact_id, Artifact.team_id == team_id)
    row = session.execute(query.with_for_update()).first()
    if row is None or (uploads_only and row.kind != "upload"):
        raise NotFound(f"No {what} {artifact_id} in your team.")
    values: dict[str, Any] = {}
    if name is not None:
        values["name"] = name
    if labels is not None:
        merged = dict(row.labels or {})
        for key, value in labels.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        if len(merged) > MAX_LABELS:
            raise InvalidRequest(f"labels: the {what} would have {len(merged)} labels; at most {MAX_LABELS} are "
                                 "allowed (remove some with a null value).",
                                 errors=[{"loc": ["body", "labels"], "msg": f"more than {MAX_LABELS} labels"}])
        values["labels"] = merged
    if values:
        session.execute(update(Artifact).where(Artifact.id == artifact_id, Artifact.team_id == team_id)
                        .values(**values))
        session.commit()
    return artifacts_service.get(session, team_id=team_id, artifact_id=artifact_id)
