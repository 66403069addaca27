"""A dry run's training estimate against the run itself, through the real API, the real worker and the real
tinker SDK talking to the fake service: the tokens the estimate counts are exactly the tokens the job then trains
on, by the job's own metrics and by what the fake Tinker received."""

from __future__ import annotations

import json
from typing import Any

import httpx
import orjson

from tests.fakes.tinker_fake import read_checkpoint
from tests.support import Stack


def rows(n: int) -> bytes:
    """Conversations of varied lengths: some two-turn, some long (over the run's max_length), some whose only
    assistant turn has weight 0 (nothing to train)."""
    out = []
    for i in range(n):
        messages: list[dict[str, Any]] = [
            {"role": "user", "content": f"Question {i}: why does step {i % 5} hold?"},
            {"role": "assistant", "content": "Look at it again. " * (1 + i % 6) + f"Case {i}."}]
        if i % 4 == 1:
            messages += [{"role": "user", "content": "And after that?"},
                         {"role": "assistant", "content": f"Then case {i} follows."}]
        if i % 9 == 4:
            messages[1]["content"] += " Much longer explanation." * 30
        if i % 10 == 7:
            messages = messages[:2]
            messages[1]["weight"] = 0
        out.append(orjson.dumps({"messages": messages}) + b"\n")
    return b"".join(out)


def test_dry_run_token_count_equals_what_the_training_job_trains_on(stack: Stack, client: httpx.Client) -> None:
    upload = client.post("/v1/files", params={"name": "mix.jsonl"}, content=rows(61)).json()
    data = client.post("/v1/jobs", json={"kind": "dataset", "spec": {
        "source": {"type": "artifact", "artifact_id": upload["id"]}}}).json()
    data = client.get(f"/v1/jobs/{data['id']}/wait", params={"timeout": 60}).json()
    assert data["status"] == "succeeded", data["error"]

    # 5 rows per step leaves a remainder out of each epoch (which rows: the epoch's shuffle), and max_steps cuts
    # the third epoch short: the count depends on the run's own batch order, not only on the rows.
    body = {"kind": "training", "spec": {"train_artifact": data["result"]["train_artifact"], "batch_size": 5,
                                         "epochs": 3, "max_steps": 25, "max_length": 100, "seed": 7,
                                         "save_every": 1000, "eval_every": 0}}
    dry = client.post("/v1/jobs", params={"dry_run": "true"}, json=body)
    assert dry.status_code == 200, dry.text
    estimate = dry.json()["estimate"]
    assert estimate["exact"] is True and estimate["dropped"] > 0  # long rows and weight-0 rows are skipped
    assert client.get("/v1/jobs", params={"kind": "training"}).json()["data"] == []

    job = client.post("/v1/jobs", json=body).json()
    done = client.get(f"/v1/jobs/{job['id']}/wait", params={"timeout": 120}).json()
    assert done["status"] == "succeeded", done["error"]
    plan = done["result"]["plan"]
    assert (estimate["examples"], estimate["steps_per_epoch"], estimate["total_steps"], estimate["batch_size"]) == (
        plan["examples"], plan["steps_per_epoch"], plan["total_steps"], plan["batch_size"])
    assert estimate["tokens_per_epoch"] == plan["tokens_per_epoch"]
    assert estimate["trained_tokens_per_epoch"] == plan["trained_tokens_per_epoch"]

    # Every step's datums, as the job recorded them ...
    series = client.get(f"/v1/jobs/{job['id']}/metrics", params={"names": "tokens,trained_tokens"}).json()["series"]
    assert [s for s, _ in series["tokens"]] == list(range(1, 26))
    assert sum(v for _, v in series["tokens"]) == estimate["tokens"]
    assert sum(v for _, v in series["trained_tokens"]) == estimate["trained_tokens"]
    # ... and as the fake Tinker received them: Σ loss weights over all datums of every optimizer step.
    state_dir = json.loads(stack.env["TUNEQ_TINKER_FAKE_CONFIG"])["state_dir"]
    lineage = read_checkpoint(state_dir, done["result"]["state_path"])["lineage"]
    assert len(lineage) == 25 and all(s["datums"] == 5 for s in lineage)
    assert sum(s["weight"] for s in lineage) == estimate["trained_tokens"]

    recorded = client.get(f"/v1/jobs/{job['id']}").json()["estimate"]  # a created job's own, cheaper estimate
    assert recorded["total_steps"] == 25 and recorded["exact"] is False
