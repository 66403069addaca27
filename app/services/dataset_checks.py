"""What the schema cannot know about a dataset job's sources: the team's artifacts, the server's local datasets."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.errors import InvalidRequest
from app.services import ownership
from app.services.auth import Caller
from app.settings import Settings


def check_dataset_spec(session: Session, caller: Caller, spec: Any, settings: Settings) -> None:
    if spec.sources is not None:
        for i, source in enumerate(spec.sources):
            check_source(session, caller, source, settings, ["body", "spec", "sources", i])
    else:
        check_source(session, caller, spec.source, settings)


def _field(loc: list[Any]) -> str:
    """`spec.sources[2].path` from ["body", "spec", "sources", 2, "path"]."""
    out = ""
    for part in loc[1:]:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def check_source(session: Session, caller: Caller, source: Any, settings: Settings,
                 loc: list[Any] | None = None) -> None:
    loc = loc or ["body", "spec", "source"]
    if source.type == "artifact":
        ownership.check_artifact(session, caller, source.artifact_id, [*loc, "artifact_id"])
    elif source.type == "local":
        base = settings.local_datasets_dir
        if base is None:
            raise InvalidRequest(f"{_field(loc)}: local sources are disabled on this server "
                                 "(TUNEQ_LOCAL_DATASETS_DIR is not set); upload the files with POST /v1/files.",
                                 errors=[{"loc": [*loc, "type"], "msg": "disabled"}])
        path = (base / source.path).resolve()
        if not path.is_relative_to(base.resolve()) or not path.is_dir():
            raise InvalidRequest(f"{_field([*loc, 'path'])}: no dataset directory '{source.path}' on this server.",
                                 errors=[{"loc": [*loc, "path"], "msg": "not found"}])
