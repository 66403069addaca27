"""Export any time: one checkpoint's LoRA weights as `adapter` artifacts (POST /v1/checkpoints/{id}/export).

Tinker exports the weights of a training client, so the checkpoint's training state is loaded into a new one
(`create_training_client_from_state`: weights only, no optimizer), whose weights are then exported and
downloaded exactly as a training job's `export_adapter` does (workers/pipelines/adapter_export.py). A re-run
starts over: nothing is kept between attempts but the files the winning attempt registers.
"""

from __future__ import annotations

from typing import Any

from app.schemas.common import plain
from app.schemas.export import ExportSpec
from app.services import training as training_service
from workers.clients.tinker import make_service_client, open_client
from workers.errors import JobFailed
from workers.lease import JobContext
from workers.pipelines.adapter_export import export_adapter


def run(spec_dict: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    spec = ExportSpec.model_validate(spec_dict)
    ref = plain(spec.checkpoint)
    # Checked again here: a reference is filled in after submit, and a worker never loads another team's state.
    paths = ctx.read(lambda session: training_service.checkpoint_paths(session, team_id=ctx.team_id, ref=ref))
    state_path = paths.state_path
    if state_path is None:
        raise JobFailed("no_state_checkpoint", f"Checkpoint {paths.id} (step {paths.step}) has no training state, "
                                               "which an export loads; export a checkpoint whose uri is set.")
    service = make_service_client(ctx.settings)
    metadata = {"tuneq_job_id": ctx.job_id, "tuneq_team_id": ctx.team_id}  # shown on the Tinker console
    client = open_client(lambda: service.create_training_client_from_state(state_path, user_metadata=metadata),
                         ctx, f"loading checkpoint {paths.id} (step {paths.step})")
    exported = export_adapter(service, client, ctx, paths.step, which=f"step {paths.step}", report_progress=True)
    return {**exported, "checkpoint": paths.id, "step": paths.step}
