"""Training jobs end to end: a real worker drives the real tinker SDK against the in-process fake service."""

from __future__ import annotations

import json
from typing import Any

import httpx
import orjson

from tests.fakes.tinker_fake import read_checkpoint
from tests.support import Stack, wait_until

TOPICS = ["fractions", "loops", "proofs", "graphs", "limits", "vectors", "sets", "primes"]


def make_dataset(client: httpx.Client, rows: int = 48, validation_rows: int = 8) -> dict[str, Any]:
    data = b"".join(orjson.dumps({"messages": [
        {"role": "user", "content": f"Explain {TOPICS[i % 8]} case {i}."},
        {"role": "assistant", "content": f"Think about {TOPICS[i % 8]} step {i}: what do you notice first?"},
    ]}) + b"\n" for i in range(rows))
    file = client.post("/v1/files", params={"name": "t.jsonl"}, content=data).json()
    spec: dict[str, Any] = {"source": {"type": "artifact", "artifact_id": file["id"]}}
    if validation_rows:
        spec["validation_rows"] = validation_rows
    job = client.post("/v1/jobs", json={"kind": "dataset", "spec": spec}).json()
    done = client.get(f"/v1/jobs/{job['id']}/wait", params={"timeout": 60}).json()
    assert done["status"] == "succeeded", done["error"]
    return done["result"]


def submit(client: httpx.Client, dataset: dict[str, Any], **spec: Any) -> dict[str, Any]:
    body = {"kind": "training", "max_attempts": spec.pop("max_attempts", 3), "spec": {
        "base_model": "Qwen/Qwen3-8B", "train_artifact": dataset["train_artifact"], "batch_size": 4,
        "epochs": 2, "save_every": 3, "eval_every": 4, **spec}}
    if "stall_seconds" in body["spec"]:  # a job field, next to max_attempts
        body["stall_seconds"] = body["spec"].pop("stall_seconds")
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def wait(client: httpx.Client, job_id: str, timeout: float = 120) -> dict[str, Any]:
    return client.get(f"/v1/jobs/{job_id}/wait", params={"timeout": timeout}).json()


def fake_lineage(stack: Stack, state_path: str) -> list[str]:
    state_dir = json.loads(stack.env["TUNEQ_TINKER_FAKE_CONFIG"])["state_dir"]
    return [s["fingerprint"] for s in read_checkpoint(state_dir, state_path)["lineage"]]


def test_dataset_to_training_with_metrics_checkpoints_and_sampler(stack: Stack, client: httpx.Client) -> None:
    dataset = make_dataset(client)
    job = wait(client, submit(client, dataset, validation_artifact=dataset["validation_artifact"])["id"])
    assert job["status"] == "succeeded", job["error"]
    result, plan = job["result"], job["result"]["plan"]
    assert plan["examples"] == 40 and plan["steps_per_epoch"] == 10 and plan["total_steps"] == 20
    assert plan["learning_rate"] == pytest_approx(4.73e-4)
    assert result["sampler_path"].startswith("tinker://") and "sampler" in result["sampler_path"]

    series = client.get(f"/v1/jobs/{job['id']}/metrics").json()["series"]
    assert [s for s, _ in series["loss"]] == list(range(1, 21))
    assert series["loss"][-1][1] < series["loss"][0][1]  # it learns
    assert [s for s, _ in series["val_loss"]] == [4, 8, 12, 16, 20]
    lrs = [v for _, v in series["lr"]]
    assert lrs[0] == pytest_approx(4.73e-4) and lrs == sorted(lrs, reverse=True)  # linear decay

    checkpoints = client.get(f"/v1/jobs/{job['id']}/checkpoints").json()["data"]
    assert {c["kind"] for c in checkpoints} == {"state"}  # one row per step: its state and sampler weights
    assert [c["step"] for c in checkpoints] == [3, 6, 9, 12, 15, 18, 20]  # sampler_every: with each save_every
    assert all(c["next_step"] == c["step"] and c["uri"].startswith("tinker://") for c in checkpoints)
    assert all(c["sampler_uri"].startswith("tinker://") and c["sampler_uri"] != c["uri"] for c in checkpoints)
    assert checkpoints[-1]["uri"] == result["state_path"] and checkpoints[-1]["sampler_uri"] == result["sampler_path"]
    losses = dict(series["loss"])
    assert [c["loss"] for c in checkpoints] == pytest_approx([losses[c["step"]] for c in checkpoints])
    assert [c["step"] for c in checkpoints if c["val_loss"] is not None] == [12, 20]  # where validation ran
    assert checkpoints[-1]["val_loss"] == pytest_approx(series["val_loss"][-1][1])
    assert all(c["eval_loss"] is None for c in checkpoints) and "best_checkpoint" not in result  # no auto_eval
    assert len(fake_lineage(stack, result["state_path"])) == 20
    # The Tinker run names its job and team (what the Tinker console shows to trace it back).
    state_dir = json.loads(stack.env["TUNEQ_TINKER_FAKE_CONFIG"])["state_dir"]
    assert read_checkpoint(state_dir, result["state_path"])["run_user_metadata"] == {
        "tuneq_job_id": job["id"], "tuneq_team_id": team_of(job["id"])}

    events = client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
    progress = [e["data"] for e in events if e["type"] == "progress"]
    assert progress[-1]["done"] == 20 and "eta_seconds" in progress[-1]


def team_of(job_id: str) -> str:
    from app.db import session_scope
    from app.models import Job

    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.team_id


def pytest_approx(value: Any) -> Any:
    import pytest

    return pytest.approx(value, rel=0.01)


def test_worker_killed_five_times_applies_every_batch_exactly_once(stack: Stack, client: httpx.Client) -> None:
    dataset = make_dataset(client, rows=80, validation_rows=0)
    reference = wait(client, submit(client, dataset, epochs=1, save_every=2)["id"])
    assert reference["status"] == "succeeded", reference["error"]
    expected = fake_lineage(stack, reference["result"]["state_path"])
    assert len(expected) == 20 and len(set(expected)) == 20

    stack.stop_workers()
    try:
        worker = stack.start_worker(concurrency=1)
        job = submit(client, dataset, epochs=1, save_every=2)  # kills are preemptions: 3 attempts are plenty
        for kill_at in (3, 6, 9, 12, 15):
            def reached(at: int = kill_at) -> bool:
                state = client.get(f"/v1/jobs/{job['id']}").json()
                return state["status"] == "running" and (state["progress"] or {}).get("done", 0) >= at
            wait_until(reached, 60, f"step {kill_at}")
            stack.kill_worker(worker)
            worker = stack.start_worker(concurrency=1)
        done = wait(client, job["id"])
    finally:
        stack.stop_workers()
        stack.start_worker()
    assert done["status"] == "succeeded", done["error"]
    assert done["attempt"] == 1 and done["preemptions"] == 5  # the infrastructure's, not the job's
    assert fake_lineage(stack, done["result"]["state_path"]) == expected  # same batches, once each, in order
    series = client.get(f"/v1/jobs/{job['id']}/metrics", params={"names": "loss"}).json()["series"]["loss"]
    assert [s for s, _ in series] == list(range(1, 21))
    ref = client.get(f"/v1/jobs/{reference['id']}/metrics", params={"names": "loss"}).json()["series"]["loss"]
    assert [round(v, 9) for _, v in series] == [round(v, 9) for _, v in ref]  # resumed exactly


def test_cancel_saves_a_final_checkpoint_and_stops(stack: Stack, client: httpx.Client) -> None:
    dataset = make_dataset(client, rows=80, validation_rows=0)
    job = submit(client, dataset, epochs=20, save_every=1000)
    wait_until(lambda: (client.get(f"/v1/jobs/{job['id']}").json()["progress"] or {}).get("done", 0) >= 3, 60,
               "a few steps")
    client.post(f"/v1/jobs/{job['id']}/cancel")
    done = wait(client, job["id"])
    assert done["status"] == "cancelled"
    checkpoints = client.get(f"/v1/jobs/{job['id']}/checkpoints").json()["data"]
    assert len(checkpoints) == 1 and checkpoints[0]["data"]["reason"] == "cancelled"
    last = checkpoints[0]["step"]
    steps = [s for s, _ in client.get(f"/v1/jobs/{job['id']}/metrics").json()["series"]["loss"]]
    assert steps == list(range(1, last + 1))  # no step after the checkpoint
    assert len(fake_lineage(stack, checkpoints[0]["uri"])) == last


def test_wrong_inputs_are_refused_with_what_to_fix(stack: Stack, client: httpx.Client) -> None:
    from tests.conftest import make_client

    dataset = make_dataset(client, rows=12, validation_rows=2)
    r = client.post("/v1/jobs", json={"kind": "training", "spec": {"base_model": "Qwen/Qwen9-1T",
                                                                   "train_artifact": dataset["train_artifact"]}})
    assert r.status_code == 422 and "base_model" in r.json()["detail"]
    upload = client.post("/v1/files", params={"name": "raw.jsonl"}, content=b'{"a": 1}\n').json()
    r = client.post("/v1/jobs", json={"kind": "training", "spec": {"train_artifact": upload["id"]}})
    assert r.status_code == 422 and "not a ChatML dataset" in r.json()["detail"]
    with make_client(stack.base_url) as other:
        other_dataset = make_dataset(other, rows=12, validation_rows=2)
    r = client.post("/v1/jobs", json={"kind": "training", "spec": {
        "train_artifact": dataset["train_artifact"], "validation_artifact": other_dataset["validation_artifact"]}})
    assert r.status_code == 422 and "spec.validation_artifact" in r.json()["detail"]

    job = wait(client, submit(client, dataset, max_length=16)["id"])
    assert job["status"] == "failed" and job["error"]["code"] == "no_trainable_examples"
    assert "max_length=16" in job["error"]["message"] and job["error"]["user_error"] is True


def test_training_from_an_earlier_checkpoint(stack: Stack, client: httpx.Client) -> None:
    dataset = make_dataset(client, rows=24, validation_rows=0)
    first = wait(client, submit(client, dataset, epochs=1)["id"])
    checkpoint = client.get(f"/v1/jobs/{first['id']}/checkpoints").json()["data"][0]
    second = wait(client, submit(client, dataset, epochs=1, from_checkpoint=checkpoint["id"])["id"])
    assert second["status"] == "succeeded", second["error"]
    lineage = fake_lineage(stack, second["result"]["state_path"])
    assert len(lineage) == checkpoint["step"] + second["result"]["steps"]


