"""What the schema cannot know about a dataset job's sources: the team's artifacts, the server's local datasets."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.errors import InvalidRequest
from app.services import ownership
from app.services.auth import Caller
from app.settings import Settings


def check_dataset_spec(session: Session, caller: Caller, spec: Any, settings: Settings) -> None:
    check_source(session, caller, spec.source, settings)


def check_source(session: Session, caller: Caller, source: Any, settings: Settings) -> None:
    loc = ["body", "spec", "source"]
    if source.type == "artifact":
        ownership.check_artifact(session, caller, source.artifact_id, [*loc, "artifact_id"])
    elif source.type == "local":
        base = settings.local_datasets_dir
        if base is None:
            raise InvalidRequest("spec.source: local sources are disabled on this server "
                                 "(TUNEQ_LOCAL_DATASETS_DIR is not set); upload the files with POST /v1/files.",
                                 errors=[{"loc": [*loc, "type"], "msg": "disabled"}])
        path = (base / source.path).resolve()
        if not path.is_relative_to(base.resolve()) or not path.is_dir():
            raise InvalidRequest(f"spec.source.path: no dataset directory '{source.path}' on this server.",
                                 errors=[{"loc": [*loc, "path"], "msg": "not found"}])
