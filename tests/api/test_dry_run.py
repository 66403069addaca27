"""`POST /v1/jobs?dry_run=true` through the HTTP API (real worker for the dataset job that makes the data): it
answers with the estimate and creates nothing; a bad spec is refused exactly as a real submit refuses it; a
created job records its estimate."""

from __future__ import annotations

from typing import Any

import httpx
import orjson


def dataset(client: httpx.Client, rows: int = 30) -> dict[str, Any]:
    data = b"".join(orjson.dumps({"messages": [
        {"role": "user", "content": f"Question {i}: what is {i} + {i}?"},
        {"role": "assistant", "content": "Let us see. " * (1 + i % 4) + f"It is {2 * i}."}]}) + b"\n"
        for i in range(rows))
    upload = client.post("/v1/files", params={"name": "rows.jsonl"}, content=data).json()
    job = client.post("/v1/jobs", json={"kind": "dataset", "spec": {
        "source": {"type": "artifact", "artifact_id": upload["id"]}}}).json()
    done = client.get(f"/v1/jobs/{job['id']}/wait", params={"timeout": 60}).json()
    assert done["status"] == "succeeded", done["error"]
    return {"upload": upload["id"], **done["result"]}


def training(artifact: str, **spec: Any) -> dict[str, Any]:
    return {"kind": "training", "spec": {"train_artifact": artifact, "batch_size": 4, "epochs": 2, **spec}}


def test_dry_run_answers_the_estimate_and_creates_nothing(client: httpx.Client) -> None:
    data = dataset(client)
    r = client.post("/v1/jobs", params={"dry_run": "true"}, json=training(data["train_artifact"]),
                    headers={"Idempotency-Key": "dry-1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dry_run"] is True and body["kind"] == "training" and body["depends_on"] == []
    assert body["spec"]["train_artifact"] == data["train_artifact"] and body["spec"]["batch_size"] == 4
    est = body["estimate"]
    assert est["exact"] is True and est["examples"] == 30 and est["steps_per_epoch"] == 7
    assert est["total_steps"] == 14 and est["tokens_per_epoch"] == data["splits"]["train"]["tokens"]
    assert est["trained_tokens_per_epoch"] == data["splits"]["train"]["trainable_tokens"]
    assert est["cost_usd"] is None and any("TUNEQ_TRAINING_PRICE_PER_MTOK" in n for n in est["notes"])

    assert client.get("/v1/jobs", params={"kind": "training"}).json()["data"] == []
    # The same Idempotency-Key on a real submit creates the job: a dry run recorded nothing under it.
    created = client.post("/v1/jobs", json=training(data["train_artifact"]), headers={"Idempotency-Key": "dry-1"})
    assert created.status_code == 201 and "Idempotent-Replayed" not in created.headers

    generation = client.post("/v1/jobs", params={"dry_run": "true"}, json={"kind": "generation", "spec": {
        "preset": "qa", "count": 50}})
    assert generation.status_code == 200, generation.text
    assert generation.json()["estimate"]["items"] == 50
    upload = client.post("/v1/jobs", params={"dry_run": "true"}, json={"kind": "dataset", "spec": {
        "source": {"type": "artifact", "artifact_id": data["upload"]}}}).json()
    assert upload["estimate"]["rows"] == 30 and upload["estimate"]["tokens"] > 0
    assert client.get("/v1/jobs", params={"kind": "generation"}).json()["data"] == []
    assert len(client.get("/v1/jobs", params={"kind": "dataset"}).json()["data"]) == 1  # the one that ran


def test_a_bad_spec_is_the_same_422_as_a_real_submit(client: httpx.Client) -> None:
    data = dataset(client, rows=8)
    bad = [
        training(data["train_artifact"], base_model="Qwen/Qwen9-1T"),  # a server-side check
        training(data["train_artifact"], batch_size=0),  # the schema
        training("art_does_not_exist"),  # a reference to the team's artifacts
        training(data["upload"]),  # an upload is not a ChatML dataset
        {"kind": "generation", "spec": {"prompt": "{{ topic", "count": 3}},  # a template that cannot compile
    ]
    for body in bad:
        dry = client.post("/v1/jobs", params={"dry_run": "true"}, json=body)
        real = client.post("/v1/jobs", json=body)
        assert dry.status_code == real.status_code == 422, (dry.text, real.text)
        assert dry.json() == real.json()
    assert client.get("/v1/jobs", params={"kind": "training"}).json()["data"] == []


def test_created_jobs_carry_their_estimate(client: httpx.Client) -> None:
    data = dataset(client, rows=12)
    job = client.post("/v1/jobs", json=training(data["train_artifact"], epochs=1)).json()
    est = client.get(f"/v1/jobs/{job['id']}").json()["estimate"]
    assert est["basis"] == "dataset_stats" and est["exact"] is False
    assert est["examples"] == 12 and est["total_steps"] == 3
    assert est["tokens_per_epoch"] == data["splits"]["train"]["tokens"]
    assert est["cost_usd"] is None and est["notes"]
    client.post(f"/v1/jobs/{job['id']}/cancel")

    test_job = client.post("/v1/jobs", json={"kind": "test"}).json()
    assert client.get(f"/v1/jobs/{test_job['id']}").json()["estimate"] is None
