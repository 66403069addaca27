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
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from app.errors import InvalidRequest, NotFound, PayloadTooLarge
from app.models import Artifact, new_id, row_dict, utcnow
from app.settings import get_settings

UPLOAD_FORMATS = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
ARTIFACT_COLUMNS = (Artifact.id, Artifact.job_id, Artifact.kind, Artifact.name, Artifact.format, Artifact.status,
                    Artifact.rows, Artifact.bytes, Artifact.sha256, Artifact.meta, Artifact.created_at)


def root() -> Path:
    return get_settings().resolved_artifact_dir


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


class AtomicWriter:
    """Write a file under the store; it appears under its final name only when complete."""

    def __init__(self, relpath: str) -> None:
        self.relpath = relpath
        self.path = local_path(relpath)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Unique per writer (pids repeat across containers); a crash leaves it in its attempt's folder.
        self._tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        self._file: IO[bytes] = open(self._tmp, "wb")  # noqa: SIM115 - closed in commit/abort
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


def begin_upload(team_id: str, name: str) -> tuple[str, AtomicWriter]:
    safe = Path(name).name or "upload"
    artifact_id = new_id("file")
    return artifact_id, AtomicWriter(f"{team_id}/{artifact_id}/{safe}")


def write_chunk(writer: AtomicWriter, chunk: bytes, max_bytes: int) -> None:
    writer.write(chunk)
    if writer.bytes > max_bytes:
        writer.abort()
        raise PayloadTooLarge(f"The file is larger than {max_bytes} bytes (TUNEQ_MAX_UPLOAD_BYTES).")


def finish_upload(session: Session, *, team_id: str, artifact_id: str, name: str, fmt: str,
                  writer: AtomicWriter) -> dict[str, Any]:
    if writer.bytes == 0:
        writer.abort()
        raise InvalidRequest("The uploaded file is empty; send the file as the request body.",
                             errors=[{"loc": ["body"], "msg": "empty"}])
    writer.commit()
    session.execute(insert(Artifact).values(
        id=artifact_id, team_id=team_id, job_id=None, kind="upload", name=Path(name).name, uri=writer.relpath,
        format=fmt, status="ready", rows=None, bytes=writer.bytes, sha256=writer.sha256, meta={},
        created_at=utcnow(),
    ))
    session.commit()
    return get(session, team_id=team_id, artifact_id=artifact_id)


def register(session: Session, *, team_id: str, job_id: str, kind: str, name: str, writer: AtomicWriter,
             fmt: str, rows: int | None, meta: dict[str, Any] | None = None) -> str:
    """Record a committed file made by a job (call inside the job's fenced transaction)."""
    artifact_id = new_id("art")
    session.execute(insert(Artifact).values(
        id=artifact_id, team_id=team_id, job_id=job_id, kind=kind, name=name, uri=writer.relpath, format=fmt,
        status="ready", rows=rows, bytes=writer.bytes, sha256=writer.sha256, meta=meta or {}, created_at=utcnow(),
    ))
    return artifact_id


def forget_job_artifacts(session: Session, job_id: str) -> None:
    """A re-run rewrites its outputs from the start; earlier rows of the same job go."""
    session.execute(delete(Artifact).where(Artifact.job_id == job_id))


def _row(session: Session, team_id: str, artifact_id: str, *extra: Any) -> Any:
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


def preview(path: Path, fmt: str, rows: int) -> list[dict[str, Any]]:
    if fmt not in ("chatml_jsonl", "jsonl"):
        raise InvalidRequest(f"Preview is available for JSONL artifacts, not {fmt}.")
    out = []
    for row in iter_jsonl_rows(path):
        out.append(row)
        if len(out) >= rows:
            break
    return out


def nth_row(path: Path, index: int) -> dict[str, Any]:
    for i, row in enumerate(iter_jsonl_rows(path)):
        if i == index:
            return row
    raise NotFound(f"The artifact has no row {index} (rows are numbered from 0).")
