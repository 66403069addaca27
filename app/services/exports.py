"""Export any time: a checkpoint's LoRA weights become adapter artifacts through an `export` job
(workers/pipelines/export.py). Only a checkpoint with a training state can be exported: Tinker exports the
weights of a training client, which is loaded from that state."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.errors import InvalidRequest, NotFound
from app.schemas.common import OutputRef
from app.schemas.jobs import CheckpointExportCreate, ExportJobCreate
from app.services import jobs as jobs_service
from app.services import training as training_service
from app.services.auth import Caller
from app.settings import Settings


def _no_state(ref: str, step: int) -> str:
    return (f"Checkpoint {ref} (step {step}) has no training state, which an export loads; export a checkpoint "
            "whose uri is set (GET /v1/jobs/{id}/checkpoints).")


def check_spec(session: Session, caller: Caller, spec: Any) -> None:
    """At submit (app/services/job_checks.py, which checks that Tinker is configured): the checkpoint is the
    team's and has a training state. A `$ref` is checked by the worker once it is filled in."""
    loc = ["body", "spec", "checkpoint"]
    if isinstance(spec.checkpoint, OutputRef):
        return
    try:
        paths = training_service.checkpoint_paths(session, team_id=caller.team_id, ref=spec.checkpoint)
    except NotFound:
        raise InvalidRequest(f"spec.checkpoint: no checkpoint {spec.checkpoint} in your team; checkpoint ids are "
                             "listed at GET /v1/jobs/{id}/checkpoints.",
                             errors=[{"loc": loc, "msg": "unknown checkpoint"}]) from None
    if paths.state_path is None:
        raise InvalidRequest(f"spec.checkpoint: {_no_state(spec.checkpoint, paths.step)}",
                             errors=[{"loc": loc, "msg": "no state"}])


def submit(session: Session, *, caller: Caller, checkpoint_id: str, body: CheckpointExportCreate,
           idempotency_key: str | None, settings: Settings) -> tuple[dict[str, Any], bool]:
    """POST /v1/checkpoints/{id}/export: an export job of that checkpoint, made as POST /v1/jobs makes one
    (checks, Idempotency-Key, wake-up after commit). An unknown checkpoint here is a 404: it is the path."""
    paths = training_service.checkpoint_paths(session, team_id=caller.team_id, ref=checkpoint_id)
    if paths.state_path is None:
        raise InvalidRequest(_no_state(checkpoint_id, paths.step),
                             errors=[{"loc": ["path", "checkpoint_id"], "msg": "no state"}])
    create = ExportJobCreate.model_validate({**body.model_dump(mode="json", exclude_unset=True), "kind": "export",
                                             "spec": {"checkpoint": paths.id}})
    return jobs_service.submit(session, caller=caller, body=create, spec=create.spec.model_dump(mode="json"),
                               kind="export", idempotency_key=idempotency_key, settings=settings)
