"""The artifact store (a directory, shared by API and workers) and its SQL rows.

Files are written atomically (temp file, fsync of file and directory, rename) while their sha256 and size
are computed, so a reader never sees a partial artifact. `uri` holds the path relative to the store root.
A job's outputs live under a folder per attempt (`<team>/<job>/attempt-<lease>/`): an old attempt that wakes
up late writes only into its own folder, which is never registered (docs/architecture.md, "Artifacts").
"""

from __future__ import annotations

import hashlib
import os
import shutil
import unicodedata
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson
from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from app.errors import InvalidRequest, NotFound, PayloadTooLarge
from app.models import Artifact, Job, new_id, row_dict, utcnow
from app.settings import get_settings

UPLOAD_FORMATS = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
ARTIFACT_COLUMNS = (Artifact.id, Artifact.job_id, Artifact.kind, Artifact.name, Artifact.format, Artifact.status,
                    Artifact.rows, Artifact.bytes, Artifact.sha256, Artifact.meta, Artifact.labels,
                    Artifact.created_at)


# Artifact files are private to the service's user: directories 0700, files 0600 (docs/architecture.md,
# "Artifacts"), whatever the process umask.
DIR_MODE, FILE_MODE = 0o700, 0o600
MAX_NAME_BYTES = 255  # a file name's limit on common filesystems; upload names are held to it too


def root() -> Path:
    return get_settings().resolved_artifact_dir


def private_dir(path: Path) -> None:
    """Create `path` and any missing parents as 0700 directories (an existing directory keeps its mode)."""
    missing = []
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(directory, DIR_MODE)  # the umask may have narrowed or (never) widened it


def local_path(uri: str) -> Path:
    return root() / uri


def attempt_path(team_id: str, job_id: str, lease_token: int, name: str) -> str:
    return f"{team_id}/{job_id}/attempt-{lease_token}/{name}"


def remove_other_attempts(team_id: str, job_id: str, lease_token: int) -> None:
    """Once an attempt registered its outputs, earlier attempts' folders (and their temp files) go."""
    job_dir = local_path(f"{team_id}/{job_id}")
    keep = f"attempt-{lease_token}"
    for child in job_dir.glob("attempt-*"):
        if child.name != keep:
            shutil.rmtree(child, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def private_opener(path: str | os.PathLike[str], flags: int) -> int:
    """`open(..., opener=private_opener)`: the file is 0600 even when it existed with another mode."""
    fd = os.open(path, flags, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return fd


class AtomicWriter:
    """Write a file under the store; it appears under its final name only when complete."""

    def __init__(self, relpath: str) -> None:
        self.relpath = relpath
        self.path = local_path(relpath)
        private_dir(self.path.parent)
        # Unique per writer (pids repeat across containers); a crash leaves it in its attempt's folder.
        self._tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        os.fchmod(fd, FILE_MODE)
        self._file: IO[bytes] = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self.bytes += len(data)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def commit(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.path)
        _fsync_dir(self.path.parent)  # the rename itself survives a power loss

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)


def upload_format(name: str, fmt: str | None) -> str:
    if fmt:
        if fmt not in UPLOAD_FORMATS.values():
            raise InvalidRequest(f"format must be one of {sorted(set(UPLOAD_FORMATS.values()))}.",
                                 errors=[{"loc": ["query", "format"], "msg": "unknown format"}])
        return fmt
    suffix = Path(name).suffix.lower()
    if suffix not in UPLOAD_FORMATS:
        raise InvalidRequest(
            f"Cannot tell the format of '{name}': name it *.jsonl, *.json, *.parquet or *.csv, or pass ?format=.",
            errors=[{"loc": ["query", "name"], "msg": "unknown file extension"}])
    return UPLOAD_FORMATS[suffix]


def validate_upload_name(name: str, loc: tuple[str, ...] = ("query", "name")) -> str:
    """The display name of an upload (or an artifact renamed), checked before anything touches disk: a plain
    file name (no path separators, NUL or control characters, not `.`/`..`) of at most 255 bytes of UTF-8."""
    problem = None
    if not name.strip():
        problem = "is empty"
    elif any(c in name for c in "/\\"):
        problem = "contains a path separator ('/' or '\\')"
    elif any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        problem = "contains a NUL or control character"
    elif name in (".", ".."):
        problem = "is '.' or '..'"
    elif len(name.encode("utf-8")) > MAX_NAME_BYTES:
        problem = f"is {len(name.encode('utf-8'))} bytes of UTF-8; at most {MAX_NAME_BYTES} are allowed"
    if problem is not None:
        raise InvalidRequest(f"name {problem}: give a plain file name such as train.jsonl.",
                             errors=[{"loc": list(loc), "msg": problem}])
    return name


def uploads_in_use(session: Session, team_id: str) -> int:
    """Bytes of the team's uploaded files: what `TUNEQ_UPLOAD_QUOTA_BYTES` limits."""
    return int(session.scalar(select(func.coalesce(func.sum(Artifact.bytes), 0))
                              .where(Artifact.team_id == team_id, Artifact.kind == "upload")) or 0)


def _over_quota(in_use: int, quota: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The team's uploads would exceed their quota of {quota} bytes (TUNEQ_UPLOAD_QUOTA_BYTES): {in_use} bytes "
        "are in use by uploaded files. Delete uploads you no longer need or ask for a larger quota.")


def check_quota(in_use: int, quota: int) -> None:
    if in_use >= quota:
        raise _over_quota(in_use, quota)


def begin_upload(team_id: str, fmt: str) -> tuple[str, AtomicWriter]:
    """A writer for a new upload, stored under a generated name (the display name lives in the row, so any
    valid display name fits the filesystem)."""
    artifact_id = new_id("file")
    return artifact_id, AtomicWriter(f"{team_id}/{artifact_id}/upload.{fmt}")


def write_chunk(writer: AtomicWriter, chunk: bytes, max_bytes: int, *, in_use: int = 0,
                quota: int | None = None) -> None:
    """Append a chunk; over the size limit or the team's quota the upload is aborted (its temp file goes)."""
    writer.write(chunk)
    if writer.bytes > max_bytes:
        discard(writer)
        raise PayloadTooLarge(f"The file is larger than {max_bytes} bytes (TUNEQ_MAX_UPLOAD_BYTES).")
    if quota is not None and in_use + writer.bytes > quota:
        discard(writer)
        raise _over_quota(in_use, quota)


def discard(writer: AtomicWriter) -> None:
    """Abort an upload: its temp file and its (then empty) folder go."""
    writer.abort()
    writer.path.unlink(missing_ok=True)
    try:
        writer.path.parent.rmdir()
    except OSError:
        pass


def finish_upload(session: Session, *, team_id: str, artifact_id: str, name: str, fmt: str,
                  writer: AtomicWriter, labels: dict[str, str] | None = None,
                  meta: dict[str, Any] | None = None) -> dict[str, Any]:
    if writer.bytes == 0:
        discard(writer)
        raise InvalidRequest("The uploaded file is empty; send the file as the request body.",
                             errors=[{"loc": ["body"], "msg": "empty"}])
    try:
        writer.commit()
        session.execute(insert(Artifact).values(
            id=artifact_id, team_id=team_id, job_id=None, kind="upload", name=name, uri=writer.relpath,
            format=fmt, status="ready", rows=None, bytes=writer.bytes, sha256=writer.sha256, meta=meta or {},
            labels=labels or {}, created_at=utcnow(),
        ))
    except BaseException:
        discard(writer)  # the file could not be committed or recorded: no row points at it, so it goes
        raise
    session.commit()  # a failed COMMIT keeps the file: the row may have been recorded all the same
    return get(session, team_id=team_id, artifact_id=artifact_id)


def register(session: Session, *, team_id: str, job_id: str, kind: str, name: str, writer: AtomicWriter,
             fmt: str, rows: int | None, meta: dict[str, Any] | None = None) -> str:
    """Record a committed file made by a job (call inside the job's fenced transaction). It starts with the
    job's labels (read in the same statement)."""
    artifact_id = new_id("art")
    session.execute(insert(Artifact).values(
        id=artifact_id, team_id=team_id, job_id=job_id, kind=kind, name=name, uri=writer.relpath, format=fmt,
        status="ready", rows=rows, bytes=writer.bytes, sha256=writer.sha256, meta=meta or {}, created_at=utcnow(),
        labels=select(Job.labels).where(Job.id == job_id).scalar_subquery(),
    ))
    return artifact_id


def forget_job_artifacts(session: Session, job_id: str) -> None:
    """A re-run rewrites its outputs from the start; earlier rows of the same job go."""
    session.execute(delete(Artifact).where(Artifact.job_id == job_id))


def _row(session: Session, team_id: str, artifact_id: str, *extra: Any) -> Any:
    if "\x00" in artifact_id:  # never an id, and PostgreSQL cannot compare text holding NUL
        raise NotFound(f"No artifact {artifact_id[:100]!r} in your team.")
    row = session.execute(select(*ARTIFACT_COLUMNS, *extra).where(Artifact.id == artifact_id,
                                                                 Artifact.team_id == team_id)).first()
    if row is None:
        raise NotFound(f"No artifact {artifact_id} in your team.")
    return row


def get(session: Session, *, team_id: str, artifact_id: str) -> dict[str, Any]:
    return row_dict(_row(session, team_id, artifact_id), "created_at")


def path_of(session: Session, *, team_id: str, artifact_id: str) -> tuple[Path, dict[str, Any]]:
    """The artifact's file and its metadata, in one query."""
    meta = row_dict(_row(session, team_id, artifact_id, Artifact.uri), "created_at")
    return local_path(meta.pop("uri")), meta


def iter_jsonl_rows(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                yield orjson.loads(line)


class RowTooLarge(InvalidRequest):
    def __init__(self, index: int, size: int, limit: int) -> None:
        super().__init__(f"row {index} is {size} bytes; preview shows rows up to {limit} bytes (TUNEQ_PREVIEW_MAX_"
                         "ROW_BYTES) — download the artifact instead.",
                         errors=[{"loc": ["row"], "msg": f"row {index} is {size} bytes, over {limit}"}])


def _bounded_lines(f: IO[bytes], limit: int) -> Iterator[tuple[bytes | None, int]]:
    """(line, size) per line, reading at most `limit`+1 bytes of a line at a time; a line longer than `limit`
    comes back as (None, its size), measured by reading on in bounded chunks, never held whole."""
    while True:
        line = f.readline(limit + 1)
        if not line:
            return
        if len(line) <= limit or line.endswith(b"\n"):
            yield line, len(line)
            continue
        size = len(line)
        while True:
            more = f.readline(1 << 20)
            size += len(more)
            if not more or more.endswith(b"\n"):
                break
        yield None, size


def iter_bounded_rows(path: Path, limit: int) -> Iterator[tuple[int, bytes | None, int]]:
    """(index, line, size) per non-blank line of a JSONL file; `line` is None for a row over `limit` bytes."""
    index = 0
    with open(path, "rb") as f:
        for line, size in _bounded_lines(f, limit):
            if line is not None and not line.strip():
                continue
            yield index, line, size
            index += 1


def _parse_row(index: int, line: bytes | None, size: int, limit: int) -> dict[str, Any]:
    if line is None:
        raise RowTooLarge(index, size, limit)
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise InvalidRequest(f"row {index} is not valid JSON; download the artifact to inspect it.",
                             errors=[{"loc": ["row"], "msg": "invalid JSON"}]) from None
    if not isinstance(row, dict):
        raise InvalidRequest(f"row {index} is not a JSON object; download the artifact to inspect it.",
                             errors=[{"loc": ["row"], "msg": "not an object"}])
    return row


def preview(path: Path, fmt: str, rows: int, *, max_row_bytes: int | None = None) -> list[dict[str, Any]]:
    if fmt not in ("chatml_jsonl", "jsonl"):
        raise InvalidRequest(f"Preview is available for JSONL artifacts, not {fmt}.")
    limit = max_row_bytes or get_settings().preview_max_row_bytes
    out = []
    for index, line, size in iter_bounded_rows(path, limit):
        out.append(_parse_row(index, line, size, limit))
        if len(out) >= rows:
            break
    return out


def nth_row(path: Path, index: int, *, max_row_bytes: int | None = None) -> dict[str, Any]:
    limit = max_row_bytes or get_settings().preview_max_row_bytes
    for i, line, size in iter_bounded_rows(path, limit):
        if i == index:
            return _parse_row(index, line, size, limit)
    raise NotFound(f"The artifact has no row {index} (rows are numbered from 0).")
