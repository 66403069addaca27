"""Evaluation jobs end to end: dataset → training → evaluation chained with depends_on, on the fake Tinker."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from tests.conftest import make_client
from tests.integration.test_training_jobs import make_dataset, submit, wait
from tests.support import Stack


def evaluate(client: httpx.Client, **spec: Any) -> httpx.Response:
    depends_on = spec.pop("depends_on", [])
    return client.post("/v1/jobs", json={"kind": "evaluation", "depends_on": depends_on,
                                         "spec": {"base_model": "Qwen/Qwen3-8B", **spec}})


def test_trained_checkpoint_beats_the_base_model_on_held_out_conversations(client: httpx.Client) -> None:
    dataset = make_dataset(client)
    training = submit(client, dataset)
    # Submitted at once: it waits (pending) for the training run, then evaluates its final sampler weights.
    r = evaluate(client, eval_artifact=dataset["validation_artifact"], training_job=training["id"],
                 depends_on=[training["id"]], samples=3, max_tokens=8)
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "pending"

    job = wait(client, r.json()["id"])
    assert job["status"] == "succeeded", job
    trained = wait(client, training["id"])
    result = job["result"]
    assert result["examples"] == 8 and result["skipped"] == 0
    by_label = {m["label"]: m for m in result["models"]}
    assert list(by_label) == ["base", training["id"]]
    assert by_label["base"]["model_path"] is None
    assert by_label[training["id"]]["model_path"] == trained["result"]["sampler_path"]
    assert by_label[training["id"]]["mean_loss"] < by_label["base"]["mean_loss"]  # training helped
    assert by_label[training["id"]]["loss_vs_base"] < 0 and result["best"] == training["id"]
    assert all(m["scored_tokens"] > 0 for m in result["models"])

    samples = client.get(f"/v1/artifacts/{result['samples_artifact']}/content")
    assert samples.status_code == 200
    lines = [orjson.loads(line) for line in samples.content.splitlines()]
    assert len(lines) == 3
    for line in lines:
        assert line["messages"][-1]["role"] == "user" and line["reference"].startswith("Think about")
        assert set(line["replies"]) == {"base", training["id"]} and line["verdicts"] == {}  # no judge asked

    events = client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
    assert [e["data"]["label"] for e in events if e["type"] == "model_scored"] == ["base", training["id"]]
    assert job["progress"]["done"] == job["progress"]["total"] == 16  # 8 conversations × 2 models


def test_wrong_inputs_are_refused_with_what_to_fix(client: httpx.Client) -> None:
    dataset = make_dataset(client, rows=12, validation_rows=0)
    # sampler_every=0: sampler weights only at the end, so the run's first states cannot be sampled
    training = wait(client, submit(client, dataset, epochs=1, save_every=1, sampler_every=0)["id"])
    assert training["status"] == "succeeded", training["error"]
    state = next(c for c in client.get(f"/v1/jobs/{training['id']}/checkpoints").json()["data"]
                 if c["kind"] == "state" and c["sampler_uri"] is None)
    upload = client.post("/v1/files", params={"name": "raw.jsonl"}, content=b'{"q": "a"}\n').json()
    art = dataset["train_artifact"]
    cases = [
        ({"eval_artifact": art, "checkpoints": [state["id"]]}, "spec.checkpoints[0]", "cannot be sampled"),
        ({"eval_artifact": art, "checkpoints": [state["uri"]]}, "spec.checkpoints[0]", "not sampler weights"),
        ({"eval_artifact": art, "checkpoints": ["ckpt_nope"]}, "spec.checkpoints[0]", "no checkpoint"),
        ({"eval_artifact": art, "checkpoints": ["ckpt_a", "ckpt_a"]}, "lists ckpt_a more than once", ""),
        ({"eval_artifact": art, "training_job": dataset_job_id(client)}, "spec.training_job", "not a training job"),
        ({"eval_artifact": upload["id"]}, "spec.eval_artifact", "not a ChatML dataset"),
        ({"eval_artifact": art, "include_base": False}, "nothing to evaluate", ""),
        ({"eval_artifact": art, "base_model": "Qwen/Qwen9-1T"}, "spec.base_model", "not supported"),
        ({"eval_artifact": art, "judge": {"model": "m"}}, "judge: there is no model to judge", ""),
        ({"eval_artifact": art, "training_job": training["id"], "samples": 0, "judge": {"model": "m"}},
         "set samples to at least 1", ""),
        ({"eval_artifact": art, "training_job": training["id"], "include_base": False,
          "judge": {"model": "m", "against": "base"}}, "needs include_base", ""),
        ({"eval_artifact": art, "training_job": training["id"], "judge": {"model": "m", "api_key": "sk"}},
         "api_key", "Extra inputs"),
    ]
    slow = submit(client, dataset, epochs=50)  # still running when the evaluation is submitted
    cases.append(({"eval_artifact": art, "training_job": slow["id"]}, "spec.training_job", "add it to depends_on"))
    for spec, where, what in cases:
        r = evaluate(client, **spec)
        assert r.status_code == 422, (spec, r.text)
        assert where in r.text and what in r.text, (spec, r.json()["detail"])
    client.post(f"/v1/jobs/{slow['id']}/cancel")


def dataset_job_id(client: httpx.Client) -> str:
    return str(client.get("/v1/jobs", params={"kind": "dataset"}).json()["data"][0]["id"])


def test_a_path_that_is_not_the_teams_fails_the_job_as_the_users_error_when_it_runs(
        stack: Stack, client: httpx.Client) -> None:
    """Defence in depth: a spec holding another team's tinker:// path (here written into the row after the
    submit-time check, as a bug elsewhere could) is refused by the worker too, as a user error naming it."""
    from sqlalchemy import update

    from app.db import session_scope
    from app.models import Job
    from tests.api.test_checkpoint_ownership import _team_of, _training_with_checkpoints

    with make_client(stack.base_url) as owner:
        theirs = _training_with_checkpoints(_team_of(owner))
    mine = _training_with_checkpoints(_team_of(client))
    dataset = make_dataset(client)
    gate = client.post("/v1/jobs", json={"kind": "test", "spec": {"steps": 1, "step_seconds": 2}}).json()
    r = evaluate(client, eval_artifact=dataset["validation_artifact"], checkpoints=[mine["sampler_id"]],
                 depends_on=[gate["id"]])
    assert r.status_code == 201, r.text
    job = r.json()
    with session_scope() as session:  # still pending behind its dependency
        session.execute(update(Job).where(Job.id == job["id"], Job.status == "pending")
                        .values(spec={**job["spec"], "checkpoints": [theirs["sampler"]]}))
    ended = wait(client, job["id"])
    assert ended["status"] == "failed", ended
    assert ended["error"]["code"] == "not_found" and ended["error"]["user_error"] is True
    assert theirs["sampler"] in ended["error"]["message"]
