"""The team owns what a spec names: the check every submit path shares (docs/architecture.md, "Ownership")."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import InvalidRequest
from app.models import Artifact
from app.schemas.common import OutputRef
from app.services.auth import Caller


def check_artifact(session: Session, caller: Caller, artifact_id: str | OutputRef, loc: list[Any]) -> None:
    # FOR SHARE (PostgreSQL): a DELETE of the artifact waits for this submission's commit, then sees the new
    # job using it and answers 409; a DELETE that came first makes this read find nothing (a 422).
    if isinstance(artifact_id, OutputRef):
        return  # filled in at release from a job this one depends on (app/services/refs.py)
    exists = session.execute(select(Artifact.id).where(Artifact.id == artifact_id, Artifact.team_id == caller.team_id)
                             .with_for_update(read=True)).first()
    if exists is None:
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[1:]).lstrip(".")
        raise InvalidRequest(f"{field}: no artifact {artifact_id} in your team.",
                             errors=[{"loc": loc, "msg": "unknown artifact"}])
