"""The scripts' workflow as one submission, through the real worker, the fake Tinker and the loopback fake
OpenRouter: two uploads and a 200-item `scaffolding` generation (from `count` alone) → one mixed dataset with
provenance → training → evaluation (examples/stage1_pipeline.yaml is the same shape at full size)."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from tests.fakes.openrouter_server import FakeOpenRouter
from tests.support import wait_until


def upload(client: httpx.Client, name: str, rows: list[dict[str, Any]]) -> str:
    data = b"".join(orjson.dumps(r) + b"\n" for r in rows)
    response = client.post("/v1/files", params={"name": name}, content=data)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_one_submission_runs_the_whole_workflow(fake: FakeOpenRouter, client: httpx.Client) -> None:
    chats = upload(client, "chats.jsonl", [{"messages": [
        {"role": "user", "content": f"How do I start problem {i}?"},
        {"role": "assistant", "content": f"What does problem {i} ask you to find first?"}]} for i in range(60)])
    alpaca = upload(client, "alpaca.jsonl", [
        {"instruction": f"Explain step {i} of long division.", "input": "",
         "output": f"Which digit do you divide first in step {i}?"} for i in range(40)])
    body = {"name": "stage1", "steps": {
        "gen": {"kind": "generation", "spec": {"preset": "scaffolding", "count": 200, "concurrency": 16}},
        "data": {"kind": "dataset", "spec": {
            "sources": [{"type": "artifact", "artifact_id": chats, "alias": "chats"},
                        {"type": "artifact", "artifact_id": alpaca, "alias": "alpaca", "shape": "alpaca"},
                        {"type": "artifact", "artifact_id": {"$ref": "gen.train_artifact"}, "alias": "scaffolding"}],
            "validation_rows": 10}},
        "train": {"kind": "training", "spec": {
            "train_artifact": {"$ref": "data.train_artifact"},
            "validation_artifact": {"$ref": "data.validation_artifact"},
            "batch_size": 16, "max_steps": 4, "save_every": 2, "rank": 16}},
        "eval": {"kind": "evaluation", "spec": {
            "eval_artifact": {"$ref": "data.validation_artifact"}, "training_job": {"$ref": "train.id"},
            "samples": 2, "max_examples": 10}},
    }}
    created = client.post("/v1/pipelines", json=body)
    assert created.status_code == 201, created.text
    pipeline_id = created.json()["id"]

    def ended() -> dict[str, Any] | None:
        p = client.get(f"/v1/pipelines/{pipeline_id}").json()
        return p if p["status"] in ("succeeded", "failed", "cancelled") else None

    done = wait_until(ended, 300, "the pipeline to end", interval=0.5)
    steps = {s["name"]: s for s in done["steps"]}
    assert done["status"] == "succeeded", {n: (s["status"], s["error"]) for n, s in steps.items()}

    # Every step's result is reachable from the pipeline.
    gen, data, train, evaluation = (steps[n]["result"] for n in ("gen", "data", "train", "eval"))
    assert gen["rows"] >= 190 and data["train_artifact"] and train["sampler_path"].startswith("tinker://")
    assert evaluation

    # `count` alone gave varied prompts, each item with its own seed.
    gen_job = steps["gen"]["job_id"]
    sent = [r for r in fake.requests if r["headers"].get("x-tuneq-item", "").startswith(gen_job)
            and r["attempt"] == 0]
    prompts = [orjson.dumps(r["json"]["messages"]) for r in sent]
    assert len(prompts) == 200
    assert len(set(prompts)) >= 0.95 * len(prompts)
    assert len({r["json"].get("seed") for r in sent}) == 200

    # One mixed dataset: its rows come from all three sources, and each row's provenance names its source.
    train_rows = data["splits"]["train"]["rows"] + data["splits"]["validation"]["rows"]
    assert train_rows >= 250
    provenance = provenance_rows(client, data)
    assert {p["source"] for p in provenance} == {"chats", "alpaca", "scaffolding"}
    assert len(provenance) == data["splits"]["train"]["rows"]
    assert all(isinstance(p["row"], int) for p in provenance)

    train_job = client.get(f"/v1/jobs/{steps['train']['job_id']}").json()
    assert train_job["spec"]["train_artifact"] == data["train_artifact"]


def provenance_rows(client: httpx.Client, data: dict[str, Any]) -> list[dict[str, Any]]:
    """Each train row's source and original row number, from the split's provenance side file."""
    response = client.get(f"/v1/artifacts/{data['splits']['train']['provenance_artifact']}/content")
    assert response.status_code == 200, response.text
    return [orjson.loads(line) for line in response.text.splitlines() if line.strip()]
