"""Pipelines through the HTTP API against a real worker: one submission, references, cascade, cancel, dry run."""

from __future__ import annotations

import httpx
import orjson

from tests.support import wait_until


def step_of(**spec: object) -> dict:
    return {"kind": "test", "spec": spec}


def wait_pipeline(client: httpx.Client, pipeline_id: str, timeout: float = 60) -> dict:
    def ended() -> dict | None:
        p = client.get(f"/v1/pipelines/{pipeline_id}").json()
        return p if all(s["status"] in ("succeeded", "failed", "cancelled") for s in p["steps"]) else None
    return wait_until(ended, timeout, f"pipeline {pipeline_id} to end")


def test_steps_run_in_order_and_a_reference_is_filled_in_from_the_earlier_step(client: httpx.Client) -> None:
    body = {"name": "chain", "labels": {"team": "a"}, "steps": {
        "first": step_of(steps=2),
        "second": {"kind": "test", "spec": {"steps": 1}, "depends_on": ["first"]},
    }}
    created = client.post("/v1/pipelines", json=body)
    assert created.status_code == 201, created.text
    pipeline = created.json()
    assert [s["name"] for s in pipeline["steps"]] == ["first", "second"]
    assert pipeline["steps"][1]["depends_on"] == ["first"]
    assert pipeline["steps"][1]["status"] == "pending"

    done = wait_pipeline(client, pipeline["id"])
    assert done["status"] == "succeeded"
    first, second = (client.get(f"/v1/jobs/{s['job_id']}").json() for s in done["steps"])
    assert second["started_at"] >= first["finished_at"]
    assert second["pipeline_id"] == pipeline["id"] and second["pipeline_step"] == "second"
    assert second["labels"] == {"team": "a"}
    assert client.get("/v1/pipelines").json()["data"][0]["id"] == pipeline["id"]


def test_references_are_filled_in_when_each_step_is_released(client: httpx.Client) -> None:
    """upload → dataset → training → evaluation in one submission: each later step names an earlier one's output,
    stored as that step's job id until it is released, then replaced by the value in its result."""
    rows = b"".join(orjson.dumps({"messages": [
        {"role": "user", "content": f"Question {i} about fractions?"},
        {"role": "assistant", "content": f"Answer {i}: what do you notice first?"}]}) + b"\n" for i in range(24))
    upload = client.post("/v1/files", params={"name": "rows.jsonl"}, content=rows).json()
    body = {"steps": {
        "data": {"kind": "dataset", "spec": {"source": {"type": "artifact", "artifact_id": upload["id"]},
                                             "validation_rows": 4}},
        "train": {"kind": "training", "spec": {"train_artifact": {"$ref": "data.train_artifact"},
                                               "validation_artifact": {"$ref": "data.validation_artifact"},
                                               "batch_size": 4, "max_steps": 3, "save_every": 3}},
        "judge": {"kind": "evaluation", "spec": {"eval_artifact": {"$ref": "data.validation_artifact"},
                                                 "training_job": {"$ref": "train.id"}, "samples": 1}},
    }}
    created = client.post("/v1/pipelines", json=body)
    assert created.status_code == 201, created.text
    pipeline = created.json()
    data_id, train_id = pipeline["steps"][0]["job_id"], pipeline["steps"][1]["job_id"]
    pending = client.get(f"/v1/jobs/{train_id}").json()
    if pending["status"] == "pending":
        assert pending["spec"]["train_artifact"] == {"$ref": f"{data_id}.train_artifact"}
    assert set(pending["depends_on"]) == {data_id}

    done = wait_pipeline(client, pipeline["id"], timeout=180)
    assert done["status"] == "succeeded", done
    data, train, judge = done["steps"]
    assert train["depends_on"] == ["data"] and set(judge["depends_on"]) == {"data", "train"}
    train_job = client.get(f"/v1/jobs/{train['job_id']}").json()
    assert train_job["spec"]["train_artifact"] == data["result"]["train_artifact"]
    assert train_job["spec"]["validation_artifact"] == data["result"]["validation_artifact"]
    judge_job = client.get(f"/v1/jobs/{judge['job_id']}").json()
    assert judge_job["spec"]["training_job"] == train["job_id"]
    assert judge_job["result"]


def test_a_plain_job_references_a_job_by_id(client: httpx.Client) -> None:
    first = client.post("/v1/jobs", json=step_of(steps=1)).json()
    # A test job has no outputs but `id`; asking for another names what it has.
    bad = client.post("/v1/jobs", json={"kind": "evaluation", "spec": {
        "eval_artifact": {"$ref": f"{first['id']}.train_artifact"}}})
    assert bad.status_code == 422
    assert "spec.eval_artifact: a test job has no output 'train_artifact'; it has id" in bad.json()["detail"]
    unknown = client.post("/v1/jobs", json={"kind": "evaluation", "spec": {
        "eval_artifact": {"$ref": "job_0123.train_artifact"}}})
    assert unknown.status_code == 422
    assert "no job in your team 'job_0123'" in unknown.json()["detail"]


def test_a_failed_first_step_cancels_every_later_step_naming_it(client: httpx.Client) -> None:
    body = {"steps": {
        "prepare": step_of(fail_with="no rows"),
        "train": {"kind": "test", "spec": {}, "depends_on": ["prepare"], "max_attempts": 1},
        "judge": {"kind": "test", "spec": {}, "depends_on": ["train"]},
        "report": {"kind": "test", "spec": {}, "depends_on": ["judge", "prepare"]},
    }}
    body["steps"]["prepare"]["max_attempts"] = 1
    pipeline = client.post("/v1/pipelines", json=body).json()
    done = wait_pipeline(client, pipeline["id"])
    statuses = {s["name"]: s["status"] for s in done["steps"]}
    assert statuses == {"prepare": "failed", "train": "cancelled", "judge": "cancelled", "report": "cancelled"}
    assert done["status"] == "failed"
    for step in done["steps"][1:]:
        assert step["error"]["code"] == "dependency_failed"
        assert step["error"]["message"].startswith("Cancelled because step 'prepare' failed"), step
        assert step["error"]["details"]["root_step"] == "prepare"
    judge = next(s for s in done["steps"] if s["name"] == "judge")
    assert "(so step 'train' was cancelled)" in judge["error"]["message"]
    events = client.get(f"/v1/jobs/{judge['job_id']}/events").json()["data"]
    assert events[-1]["type"] == "cancelled" and "step 'prepare' failed" in events[-1]["data"]["reason"]


def test_cancel_stops_what_has_not_finished(client: httpx.Client) -> None:
    body = {"steps": {"slow": step_of(steps=200, step_seconds=0.05),
                      "after": {"kind": "test", "spec": {}, "depends_on": ["slow"]}}}
    pipeline = client.post("/v1/pipelines", json=body).json()
    wait_until(lambda: client.get(f"/v1/pipelines/{pipeline['id']}").json()["steps"][0]["status"] == "running",
               30, "the first step to run")
    cancelled = client.post(f"/v1/pipelines/{pipeline['id']}/cancel")
    assert cancelled.status_code == 200
    done = wait_pipeline(client, pipeline["id"])
    assert [s["status"] for s in done["steps"]] == ["cancelled", "cancelled"]
    assert done["status"] == "cancelled"


def test_submit_checks_names_references_and_cycles(client: httpx.Client) -> None:
    def refused(steps: dict) -> str:
        response = client.post("/v1/pipelines", json={"steps": steps})
        assert response.status_code == 422, response.text
        return response.json()["detail"]

    assert "'nope' is neither a step of this pipeline" in refused(
        {"a": {"kind": "test", "spec": {}, "depends_on": ["nope"]}})
    assert "steps: they wait on each other in a cycle" in refused({
        "a": {"kind": "test", "spec": {}, "depends_on": ["b"]},
        "b": {"kind": "test", "spec": {}, "depends_on": ["a"]}})
    detail = refused({"data": step_of(), "train": {"kind": "training", "spec": {
        "train_artifact": {"$ref": "data.train_artifact"}}}})
    assert detail.startswith("steps.train.spec.train_artifact: a test job has no output 'train_artifact'")
    assert "no step or job 'ghost'" in refused({"train": {"kind": "training", "spec": {
        "train_artifact": {"$ref": "ghost.train_artifact"}}}})
    # A step's own spec errors are addressed to it.
    detail = refused({"train": {"kind": "training", "spec": {"train_artifact": "art_missing"}}})
    assert detail.startswith("steps.train.spec.train_artifact: no artifact art_missing in your team"), detail
    assert client.get("/v1/pipelines").json()["data"] == []  # nothing was created by a refused submit


def test_dry_run_creates_nothing(client: httpx.Client) -> None:
    before = client.get("/v1/jobs").json()["data"]
    response = client.post("/v1/pipelines", params={"dry_run": "true"},
                           json={"steps": {"a": step_of(), "b": {"kind": "test", "spec": {},
                                                                   "depends_on": ["a"]}}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["dry_run"] is True and set(body["steps"]) == {"a", "b"}
    assert body["steps"]["b"]["depends_on"] == ["a"]
    assert client.get("/v1/jobs").json()["data"] == before


def test_another_teams_pipeline_is_not_found(client: httpx.Client, stack: object) -> None:
    from tests.conftest import make_client

    pipeline = client.post("/v1/pipelines", json={"steps": {"a": step_of()}}).json()
    other = make_client(str(client.base_url), "pipeline-other-team")
    assert other.get(f"/v1/pipelines/{pipeline['id']}").status_code == 404
    assert other.post(f"/v1/pipelines/{pipeline['id']}/cancel").status_code == 404


def test_the_example_pipeline_file_is_a_valid_pipeline() -> None:
    """examples/stage1_pipeline.yaml (the README's workflow) parses as a pipeline, with steps in a valid order."""
    from pathlib import Path

    import yaml

    from app.schemas.pipelines import PipelineCreate

    body = PipelineCreate.model_validate(yaml.safe_load(Path("examples/stage1_pipeline.yaml").read_text()))
    assert list(body.steps) == ["gen", "data", "train", "compare"]
    assert body.steps["train"].spec.train_artifact.ref == "data.train_artifact"


def test_an_idempotency_key_makes_a_retried_submit_safe(client: httpx.Client) -> None:
    body = {"steps": {"a": step_of()}}
    first = client.post("/v1/pipelines", json=body, headers={"Idempotency-Key": "stage1-monday"})
    again = client.post("/v1/pipelines", json=body, headers={"Idempotency-Key": "stage1-monday"})
    assert first.status_code == 201 and again.status_code == 201
    assert again.json()["id"] == first.json()["id"] and again.headers["Idempotent-Replayed"] == "true"
    other = client.post("/v1/pipelines", json={"steps": {"b": step_of()}}, headers={"Idempotency-Key": "stage1-monday"})
    assert other.status_code == 422 and "different request body" in other.json()["detail"]
    # An empty header is no key: each submit creates its own pipeline (and its jobs).
    empty = [client.post("/v1/pipelines", json=body, headers={"Idempotency-Key": ""}) for _ in range(2)]
    assert [r.status_code for r in empty] == [201, 201] and empty[0].json()["id"] != empty[1].json()["id"]
    jobs = [client.post("/v1/jobs", json=step_of(), headers={"Idempotency-Key": ""}) for _ in range(2)]
    assert [r.status_code for r in jobs] == [201, 201] and jobs[0].json()["id"] != jobs[1].json()["id"]
