"""Export any time: POST /v1/checkpoints/{id}/export makes an `export` job that loads a checkpoint's training
state into (fake) Tinker, exports its LoRA weights and stores them as `adapter` artifacts, long after the run
that saved it ended."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from safetensors.numpy import load as load_safetensors

from tests.conftest import make_client
from tests.fakes.tinker_fake import ADAPTER_TENSOR, read_checkpoint
from tests.integration.test_training_jobs import make_dataset, submit, wait
from tests.support import Stack


@pytest.fixture(scope="module")
def export_worker(stack: Stack) -> Iterator[None]:
    """A worker serving the `export` queue (the stack's worker may not list it)."""
    proc = stack.start_worker(concurrency=1, queues="export")
    yield
    stack.kill_worker(proc)


def _trained(client: httpx.Client) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A finished training run saving a state every step, and its checkpoints."""
    job = wait(client, submit(client, make_dataset(client, rows=12, validation_rows=0), rank=8, epochs=1,
                              save_every=1)["id"])
    assert job["status"] == "succeeded", job["error"]
    return job, client.get(f"/v1/jobs/{job['id']}/checkpoints").json()["data"]


def test_an_intermediate_checkpoint_exported_after_the_run_matches_the_bytes_served(
        stack: Stack, client: httpx.Client, export_worker: None) -> None:
    job, checkpoints = _trained(client)
    states = [c for c in checkpoints if c["kind"] == "state"]
    intermediate = states[0]
    assert len(states) > 1 and intermediate["step"] < states[-1]["step"]

    key = {"Idempotency-Key": f"export-{uuid.uuid4().hex}"}
    r = client.post(f"/v1/checkpoints/{intermediate['id']}/export", json={"labels": {"why": "keep"}}, headers=key)
    assert r.status_code == 202, r.text
    export = r.json()
    assert export["kind"] == "export" and export["spec"] == {"checkpoint": intermediate["id"]}
    assert export["labels"] == {"why": "keep"}
    replay = client.post(f"/v1/checkpoints/{intermediate['id']}/export", json={"labels": {"why": "keep"}},
                         headers=key)
    assert replay.status_code == 202 and replay.json()["id"] == export["id"]
    assert replay.headers.get("idempotent-replayed") == "true"

    done = client.get(f"/v1/jobs/{export['id']}/wait", params={"timeout": 90}).json()
    assert done["status"] == "succeeded", done["error"]
    result = done["result"]
    assert result["checkpoint"] == intermediate["id"] and result["step"] == intermediate["step"]
    assert result["adapter_path"].startswith("tinker://") and "/external_weights/" in result["adapter_path"]
    assert done["progress"]["unit"] == "files downloaded"
    assert done["progress"]["done"] == done["progress"]["total"] == len(result["adapter_artifacts"])

    served: dict[str, bytes] = {}
    for artifact_id in result["adapter_artifacts"]:
        meta = client.get(f"/v1/artifacts/{artifact_id}").json()
        assert meta["kind"] == "adapter" and meta["job_id"] == export["id"]
        content = client.get(f"/v1/artifacts/{artifact_id}/content")
        assert content.status_code == 200
        assert hashlib.sha256(content.content).hexdigest() == meta["sha256"]
        served[meta["name"]] = content.content
    assert set(served) == {"adapter_model.safetensors", "adapter_config.json"}

    state_dir = json.loads(stack.env["TUNEQ_TINKER_FAKE_CONFIG"])["state_dir"]
    weights = load_safetensors(served["adapter_model.safetensors"])[ADAPTER_TENSOR]
    at_step = np.asarray(read_checkpoint(state_dir, intermediate["uri"])["params"], dtype=np.float32)
    final = np.asarray(read_checkpoint(state_dir, states[-1]["uri"])["params"], dtype=np.float32)
    assert np.array_equal(weights, at_step)  # the intermediate weights, not the run's final ones
    assert not np.array_equal(weights, final)


def test_an_export_job_can_be_submitted_like_any_job(client: httpx.Client, export_worker: None) -> None:
    _, checkpoints = _trained(client)
    last_state = [c for c in checkpoints if c["kind"] == "state"][-1]
    r = client.post("/v1/jobs", json={"kind": "export", "spec": {"checkpoint": last_state["uri"]}})
    assert r.status_code == 201, r.text
    done = client.get(f"/v1/jobs/{r.json()['id']}/wait", params={"timeout": 90}).json()
    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["checkpoint"] == last_state["id"]
    listed = client.get("/v1/jobs", params={"kind": "export"}).json()["data"]
    assert [j["id"] for j in listed] == [r.json()["id"]]


def test_what_cannot_be_exported_is_refused(stack: Stack, client: httpx.Client) -> None:
    from sqlalchemy import select

    from app.db import session_scope
    from app.models import ApiKey, Job
    from app.services import training as training_service

    prefix = client.headers["Authorization"].split()[1].split("_", 2)[1]
    with session_scope() as session:
        team_id = session.scalars(select(ApiKey.team_id).where(ApiKey.prefix == prefix)).one()
        job = Job(team_id=team_id, kind="training", status="succeeded", spec={}, labels={})
        session.add(job)
        session.flush()
        sampler_only = training_service.add_checkpoint(
            session, job_id=job.id, step=7, kind="sampler",
            uri=f"tinker://run-{uuid.uuid4().hex[:8]}/sampler_weights/step-7", next_step=7, data={})

    r = client.post(f"/v1/checkpoints/{sampler_only}/export")
    assert r.status_code == 422, r.text
    assert "no training state" in r.json()["detail"]
    with make_client(stack.base_url) as stranger:
        r = stranger.post(f"/v1/checkpoints/{sampler_only}/export")
        assert r.status_code == 404, r.text
    assert client.post("/v1/checkpoints/ckpt_missing/export").status_code == 404


def test_a_submitted_export_names_the_field_to_fix(stack: Stack, client: httpx.Client) -> None:
    """POST /v1/jobs checks the checkpoint at submit (app/services/exports.py, called from job_checks)."""
    with make_client(stack.base_url) as other:
        _, theirs = _trained(other)
    for ref in (theirs[0]["id"], theirs[0]["uri"], "ckpt_missing"):
        r = client.post("/v1/jobs", json={"kind": "export", "spec": {"checkpoint": ref}})
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["loc"] == ["body", "spec", "checkpoint"]
