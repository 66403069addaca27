"""One of every kind of object a team can own, made through the API (fake Tinker, local data): the ids the
fuzz and BOLA tests aim at."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson


@dataclass
class TeamObjects:
    jobs: dict[str, str] = field(default_factory=dict)  # name -> job id (every one ended)
    artifacts: dict[str, str] = field(default_factory=dict)  # name -> artifact id
    checkpoints: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> checkpoint row
    pipelines: dict[str, str] = field(default_factory=dict)  # name -> pipeline id

    def ids(self) -> list[str]:
        return [*self.jobs.values(), *self.artifacts.values(), *(c["id"] for c in self.checkpoints.values()),
                *self.pipelines.values()]

    def tinker_paths(self) -> list[str]:
        return [c["uri"] for c in self.checkpoints.values() if c.get("uri")]


def unthrottled_client(base_url: str) -> httpx.Client:
    """A client of a fresh team whose key has a rate limit far above what a test sends (fuzzing sends
    hundreds of requests a second; TUNEQ_RATE_LIMIT would answer most of them 429)."""
    from app.db import session_scope
    from app.services import auth

    with session_scope() as session:
        team = auth.get_or_create_team(session, f"team-{uuid.uuid4().hex[:10]}")
        _, plain = auth.create_key(session, team_id=team.id, rate_limit="100000/second")
    return httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {plain}"}, timeout=30)


def _ok(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code in (200, 201), (r.request.method, r.request.url, r.status_code, r.text)
    return r.json()


def _finished(client: httpx.Client, job_id: str) -> dict[str, Any]:
    for _ in range(6):  # each wait answers within the client's 30 s timeout
        job = _ok(client.get(f"/v1/jobs/{job_id}/wait", params={"timeout": 15}))
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
    raise AssertionError(f"job {job_id} did not end: {job}")


def _submit(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    return _finished(client, _ok(client.post("/v1/jobs", json=body))["id"])


def make_team_objects(client: httpx.Client, *, training: bool = True) -> TeamObjects:
    """A succeeded and a failed test job, an upload, a dataset job and its artifacts, and (with `training`)
    a short training job on the fake Tinker with its checkpoints."""
    out = TeamObjects()
    out.jobs["test"] = _submit(client, {"kind": "test", "spec": {"steps": 1}})["id"]
    failed = _submit(client, {"kind": "test", "spec": {"steps": 1, "fail_with": "planned"}, "max_attempts": 1})
    assert failed["status"] == "failed", failed
    out.jobs["test_failed"] = failed["id"]
    pipeline = _ok(client.post("/v1/pipelines", json={"steps": {"only": {"kind": "test", "spec": {"steps": 1}}}}))
    out.pipelines["one_step"] = pipeline["id"]
    _finished(client, pipeline["steps"][0]["job_id"])
    rows = b"".join(orjson.dumps({"messages": [
        {"role": "user", "content": f"What is {i} plus {i}?"},
        {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
    ]}) + b"\n" for i in range(24))
    out.artifacts["upload"] = _ok(client.post("/v1/files", params={"name": "rows.jsonl"}, content=rows))["id"]
    dataset = _submit(client, {"kind": "dataset", "spec": {
        "source": {"type": "artifact", "artifact_id": out.artifacts["upload"]}, "validation_rows": 4}})
    assert dataset["status"] == "succeeded", dataset
    out.jobs["dataset"] = dataset["id"]
    out.artifacts["train"] = dataset["result"]["train_artifact"]
    out.artifacts["validation"] = dataset["result"]["validation_artifact"]
    if training:
        job = _submit(client, {"kind": "training", "spec": {
            "base_model": "Qwen/Qwen3-8B", "train_artifact": out.artifacts["train"], "batch_size": 4,
            "epochs": 1, "save_every": 2, "eval_every": 0}})
        assert job["status"] == "succeeded", job
        out.jobs["training"] = job["id"]
        for row in _ok(client.get(f"/v1/jobs/{job['id']}/checkpoints"))["data"]:
            out.checkpoints.setdefault(row["kind"], row)
    return out
