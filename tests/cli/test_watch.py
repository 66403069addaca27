"""`tuneq jobs watch` on the two richer kinds of thing: a training job (loss curves and the latest checkpoint)
and a pipeline (one line per step)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import yaml

from tests.cli.conftest import Tuneq
from tests.integration.test_training_jobs import make_dataset


def test_watch_training_shows_the_loss_curves_and_the_latest_checkpoint(tuneq: Tuneq, client: httpx.Client,
                                                                         tmp_path: Path) -> None:
    dataset = make_dataset(client, rows=24, validation_rows=8)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"kind": "training", "spec": {
        "base_model": "Qwen/Qwen3-8B", "train_artifact": dataset["train_artifact"],
        "validation_artifact": dataset["validation_artifact"], "batch_size": 4, "epochs": 1, "save_every": 2,
        "eval_every": 2}}))
    job_id = json.loads(tuneq("submit", str(path), "--json").stdout)["id"]

    watched = tuneq("jobs", "watch", job_id)

    assert watched.exit_code == 0, watched.output
    lines = watched.stdout.splitlines()
    assert any(line.strip().startswith("loss ") for line in lines)
    assert any(line.strip().startswith("val_loss ") for line in lines)
    assert "latest checkpoint: ckpt_" in watched.stdout
    assert f"job {job_id} succeeded" in watched.stdout

    listed = json.loads(tuneq("checkpoints", "ls", job_id, "--json").stdout)["data"]
    sampleable = [c["id"] for c in listed if c["kind"] == "sampler" or c.get("sampler_uri")]
    table = tuneq("checkpoints", "ls", job_id)
    chat = tuneq("chat", sampleable[-1], "--max-tokens", "6", input="What is 2 plus 2?\n")
    assert all(c["id"] in table.stdout for c in listed)
    assert chat.exit_code == 0 and f"{sampleable[-1]}> " in chat.stdout


def test_watch_a_pipeline_shows_each_step_and_its_outcome(tuneq: Tuneq, tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"name": "chain", "steps": {
        "first": {"kind": "test", "spec": {"steps": 2, "step_seconds": 0.02}},
        "second": {"kind": "test", "spec": {"steps": 1, "fail_with": "no GPU left"}, "depends_on": ["first"]}}}))
    submitted = tuneq("submit", str(path))
    pipeline_id = submitted.stdout.split()[1]

    watched = tuneq("jobs", "watch", pipeline_id)

    assert submitted.exit_code == 0 and submitted.stdout.startswith("pipeline ")
    assert watched.exit_code == 1
    assert "first" in watched.stdout and "second" in watched.stdout
    assert f"pipeline {pipeline_id} failed: " in watched.stdout and "no GPU left" in watched.stdout
    shown = json.loads(tuneq("jobs", "show", pipeline_id, "--json").stdout)
    assert shown["id"] == pipeline_id and [s["status"] for s in shown["steps"]] == ["succeeded", "failed"]


def test_cancel_a_pipeline_cancels_its_steps(tuneq: Tuneq, tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"steps": {
        "slow": {"kind": "test", "spec": {"steps": 200, "step_seconds": 0.05}},
        "after": {"kind": "test", "depends_on": ["slow"]}}}))
    pipeline_id = json.loads(tuneq("submit", str(path), "--json").stdout)["id"]

    cancelled = tuneq("jobs", "cancel", pipeline_id)
    watched = tuneq("jobs", "watch", pipeline_id)

    assert cancelled.exit_code == 0 and f"pipeline {pipeline_id}: cancel requested" in cancelled.stdout
    assert watched.exit_code == 1 and f"pipeline {pipeline_id} cancelled" in watched.stdout
