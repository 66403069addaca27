"""What the schema cannot know about a job spec: references to the team's artifacts, jobs and checkpoints,
server-side settings and keys. A field holding an `OutputRef` (filled in at release) is skipped here."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import InvalidRequest, NotFound
from app.models import Artifact, Checkpoint, Job
from app.schemas.common import OutputRef
from app.schemas.jobs import JobCreateBase
from app.services import dataset_checks, exports, ownership, webhooks
from app.services import generation as generation_service
from app.services import training as training_service
from app.services.auth import Caller
from app.settings import Settings


def check_spec(session: Session, caller: Caller, kind: str, body: JobCreateBase, settings: Settings) -> None:
    """What the schema cannot know: references to the team's artifacts, server-side settings and keys."""
    spec = getattr(body, "spec", None)
    webhooks.check_url(getattr(body, "webhook_url", None), settings, ["body", "webhook_url"])  # DNS only if given
    if kind == "dataset" and spec is not None:
        dataset_checks.check_dataset_spec(session, caller, spec, settings)
    elif kind == "generation" and spec is not None:
        if settings.openrouter_api_key is None:
            raise InvalidRequest("Generation jobs need OPENROUTER_API_KEY, which this server does not have; "
                                 "ask an operator to set it.", errors=[{"loc": ["body", "kind"], "msg": "no key"}])
        if spec.source_artifact is not None:
            ownership.check_artifact(session, caller, spec.source_artifact, ["body", "spec", "source_artifact"])
        generation_service.check_spec(spec)
    elif kind == "training" and spec is not None:
        _check_training(session, caller, spec, settings)
    elif kind == "evaluation" and spec is not None:
        _check_evaluation(session, caller, spec, settings, body.depends_on)
    elif kind == "export" and spec is not None:
        _require_tinker(kind, settings)
        exports.check_spec(session, caller, spec)


def _require_tinker(kind: str, settings: Settings) -> None:
    if settings.tinker_api_key is None and settings.tinker_fake is None:
        raise InvalidRequest(f"{kind.capitalize()} jobs need TINKER_API_KEY, which this server does not have; ask an "
                             "operator to set it.", errors=[{"loc": ["body", "kind"], "msg": "no key"}])


def _check_tinker(kind: str, spec: Any, settings: Settings) -> None:
    _require_tinker(kind, settings)
    if spec.base_model not in settings.supported_base_models:
        raise InvalidRequest(f"spec.base_model: '{spec.base_model}' is not supported here; use one of "
                             f"{', '.join(settings.supported_base_models)}.",
                             errors=[{"loc": ["body", "spec", "base_model"], "msg": "unsupported model"}])


def _check_chatml(session: Session, caller: Caller, artifact_id: str, name: str, *, need_rows: bool) -> None:
    loc = ["body", "spec", name]
    ownership.check_artifact(session, caller, artifact_id, loc)
    fmt, rows = session.execute(select(Artifact.format, Artifact.rows).where(Artifact.id == artifact_id)).one()
    if fmt != "chatml_jsonl":
        raise InvalidRequest(f"spec.{name}: artifact {artifact_id} is a {fmt} file, not a ChatML dataset; "
                             "run a dataset job on it first.", errors=[{"loc": loc, "msg": "not a ChatML dataset"}])
    if need_rows and not rows:
        raise InvalidRequest(f"spec.{name}: artifact {artifact_id} has no rows.",
                             errors=[{"loc": loc, "msg": "empty"}])


def _check_training(session: Session, caller: Caller, spec: Any, settings: Settings) -> None:
    _check_tinker("training", spec, settings)
    if not isinstance(spec.train_artifact, OutputRef):
        _check_chatml(session, caller, spec.train_artifact, "train_artifact", need_rows=True)
    if isinstance(spec.validation_artifact, str):
        _check_chatml(session, caller, spec.validation_artifact, "validation_artifact", need_rows=False)
    if isinstance(spec.from_checkpoint, OutputRef):
        pass  # a step's output, checked when it is filled in
    elif spec.from_checkpoint and spec.from_checkpoint.startswith("tinker://"):
        # One Tinker key serves every team: a raw path is accepted only if it is one of the team's checkpoints.
        if not training_service.owns_tinker_path(session, team_id=caller.team_id, uri=spec.from_checkpoint):
            raise InvalidRequest(_foreign_path("spec.from_checkpoint", spec.from_checkpoint),
                                 errors=[{"loc": ["body", "spec", "from_checkpoint"], "msg": "not your checkpoint"}])
    elif spec.from_checkpoint:
        found = session.execute(select(Checkpoint.id).join(Job, Job.id == Checkpoint.job_id).where(
            Checkpoint.id == spec.from_checkpoint, Job.team_id == caller.team_id)).first()
        if found is None:
            raise InvalidRequest(f"spec.from_checkpoint: no checkpoint {spec.from_checkpoint} in your team.",
                                 errors=[{"loc": ["body", "spec", "from_checkpoint"], "msg": "unknown checkpoint"}])


def _foreign_path(field: str, uri: str) -> str:
    return (f"{field}: {uri} is not a checkpoint of your team; use a checkpoint id from "
            "GET /v1/jobs/{id}/checkpoints.")


def _check_evaluation(session: Session, caller: Caller, spec: Any, settings: Settings,
                      depends_on: list[str]) -> None:
    _check_tinker("evaluation", spec, settings)
    if spec.judge is not None and settings.openrouter_api_key is None:
        raise InvalidRequest("spec.judge: the judge runs over OpenRouter, and this server has no OPENROUTER_API_KEY; "
                             "ask an operator to set it, or submit without judge.",
                             errors=[{"loc": ["body", "spec", "judge"], "msg": "no OPENROUTER_API_KEY"}])
    if not isinstance(spec.eval_artifact, OutputRef):
        _check_chatml(session, caller, spec.eval_artifact, "eval_artifact", need_rows=True)
    for i, ref in enumerate(spec.checkpoints):
        loc = ["body", "spec", "checkpoints", i]
        if isinstance(ref, OutputRef):
            continue
        if ref.startswith("tinker://") and not training_service.owns_tinker_path(session, team_id=caller.team_id,
                                                                                 uri=ref):
            raise InvalidRequest(_foreign_path(f"spec.checkpoints[{i}]", ref),
                                 errors=[{"loc": loc, "msg": "not your checkpoint"}])
        try:  # either layout: a state row with its sampler_uri, or an older run's row of kind "sampler"
            paths = training_service.checkpoint_paths(session, team_id=caller.team_id, ref=ref)
        except NotFound:
            raise InvalidRequest(f"spec.checkpoints[{i}]: no checkpoint {ref} in your team.",
                                 errors=[{"loc": loc, "msg": "unknown checkpoint"}]) from None
        if paths.sampler_path is None:
            raise InvalidRequest(f"spec.checkpoints[{i}]: {ref} (step {paths.step}) is a training state, not sampler "
                                 "weights, so it cannot be sampled; use a checkpoint whose sampler_uri is set "
                                 "(GET /v1/jobs/{id}/checkpoints; sampler_every decides which steps save them).",
                                 errors=[{"loc": loc, "msg": "not a sampler checkpoint"}])
    if isinstance(spec.training_job, str):
        found = session.execute(select(Job.kind, Job.status).where(Job.id == spec.training_job,
                                                                   Job.team_id == caller.team_id)).first()
        loc = ["body", "spec", "training_job"]
        if found is None:
            raise InvalidRequest(f"spec.training_job: no job {spec.training_job} in your team.",
                                 errors=[{"loc": loc, "msg": "unknown job"}])
        if found.kind != "training":
            raise InvalidRequest(f"spec.training_job: {spec.training_job} is a {found.kind} job, not a training "
                                 "job.", errors=[{"loc": loc, "msg": "not a training job"}])
        if found.status != "succeeded" and spec.training_job not in depends_on:
            raise InvalidRequest(f"spec.training_job: {spec.training_job} is {found.status}; add it to depends_on "
                                 "so the evaluation waits for its final weights.",
                                 errors=[{"loc": loc, "msg": "add to depends_on"}])
