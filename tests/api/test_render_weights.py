"""`weight: 0` on assistant turns, end to end: upload → dataset job → render preview shows those tokens untrained."""

from __future__ import annotations

from typing import Any

import httpx
import orjson


def upload(client: httpx.Client, name: str, rows: list[Any]) -> str:
    data = b"".join(orjson.dumps(r) + b"\n" for r in rows)
    r = client.post("/v1/files", params={"name": name}, content=data,
                    headers={"content-type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def exchange(i: int, weight: int | None = None) -> list[dict[str, Any]]:
    reply: dict[str, Any] = {"role": "assistant", "content": f"Answer {i}."}
    if weight is not None:
        reply["weight"] = weight
    return [{"role": "user", "content": f"Question {i}?"}, reply]


def trained(render: dict[str, Any]) -> str:
    return "".join(p for p, w in zip(render["pieces"], render["weights"], strict=True) if w)


def test_weight_zero_turns_survive_the_dataset_job_and_show_in_the_render_preview(client: httpx.Client) -> None:
    rows = [
        {"messages": [*exchange(1, weight=0), *exchange(2)]},
        {"messages": [*exchange(3, weight=1), *exchange(4, weight=0)]},
        {"messages": [*exchange(5), *exchange(6)]},
        # planted bad weights: on a user turn, and a value other than 0/1
        {"messages": [{"role": "user", "content": "Hi", "weight": 0}, {"role": "assistant", "content": "Yo"}]},
        {"messages": [*exchange(7, weight=2)]},
    ]
    file_id = upload(client, "weights.jsonl", rows)
    r = client.post("/v1/jobs", json={"kind": "dataset", "spec": {
        "source": {"type": "artifact", "artifact_id": file_id}, "shape": "messages", "shuffle": False}})
    assert r.status_code == 201, r.text
    job = client.get(f"/v1/jobs/{r.json()['id']}/wait", params={"timeout": 60}).json()
    assert job["status"] == "succeeded", job["error"]
    result = job["result"]
    assert result["dropped"] == {"bad_weight": 2}
    examples = result["drop_examples"]["bad_weight"]
    assert [(e["row"], e["field"]) for e in examples] == [(4, "messages[0].weight"), (5, "messages[1].weight")]  # 1-based
    assert "only assistant messages" in examples[0]["message"] and "got 2" in examples[1]["message"]

    art = result["train_artifact"]
    preview = client.get(f"/v1/artifacts/{art}/preview", params={"rows": 3}).json()["rows"]
    assert preview == rows[:3]  # the weights are kept as written

    first = client.post(f"/v1/artifacts/{art}/render", params={"row": 0}).json()
    text = "".join(first["pieces"])
    assert "Answer 1.<|im_end|>" in text  # the weight-0 turn is still in the context...
    assert trained(first) == "<think>\n\n</think>\n\nAnswer 2.<|im_end|>"  # ...but not trained
    assert first["trained_tokens"] == sum(1 for w in first["weights"] if w)

    second = client.post(f"/v1/artifacts/{art}/render", params={"row": 1}).json()
    assert trained(second) == "Answer 3.<|im_end|>"
    last = client.post(f"/v1/artifacts/{art}/render", params={"row": 1, "train_on": "last_assistant"}).json()
    assert last["trained_tokens"] == 0 and not any(last["weights"])
    assert last["tokens"] == second["tokens"]

    plain = client.post(f"/v1/artifacts/{art}/render", params={"row": 2}).json()
    assert trained(plain) == "Answer 5.<|im_end|><think>\n\n</think>\n\nAnswer 6.<|im_end|>"

    # the job's statistics count only the trained tokens
    assert result["splits"]["train"]["rows"] == 3
    assert result["splits"]["train"]["trainable_tokens"] == (
        first["trained_tokens"] + second["trained_tokens"] + plain["trained_tokens"])


def test_training_trains_only_weighted_turns(client: httpx.Client) -> None:
    rows = [{"messages": [*exchange(i, weight=0), *exchange(i + 100)]} for i in range(6)]
    rows.append({"messages": [*exchange(50, weight=0)]})  # nothing to train in this row
    file_id = upload(client, "weighted-train.jsonl", rows)
    r = client.post("/v1/jobs", json={"kind": "dataset", "spec": {
        "source": {"type": "artifact", "artifact_id": file_id}, "shape": "messages", "shuffle": False}})
    dataset = client.get(f"/v1/jobs/{r.json()['id']}/wait", params={"timeout": 60}).json()
    assert dataset["status"] == "succeeded", dataset["error"]
    art = dataset["result"]["train_artifact"]
    renders = [client.post(f"/v1/artifacts/{art}/render", params={"row": i}).json() for i in range(7)]
    assert [trained(r) for r in renders[:6]] == [
        f"<think>\n\n</think>\n\nAnswer {i + 100}.<|im_end|>" for i in range(6)]
    assert renders[6]["trained_tokens"] == 0
    assert dataset["result"]["splits"]["train"]["trainable_tokens"] == sum(r["trained_tokens"] for r in renders)

    r = client.post("/v1/jobs", json={"kind": "training", "spec": {
        "base_model": "Qwen/Qwen3-8B", "train_artifact": art, "batch_size": 6, "epochs": 1}})
    assert r.status_code == 201, r.text
    job = client.get(f"/v1/jobs/{r.json()['id']}/wait", params={"timeout": 120}).json()
    assert job["status"] == "succeeded", job["error"]
    plan = job["result"]["plan"]
    assert plan["examples"] == 6  # the row with nothing to train is skipped
    # every step's datums carry exactly the render's weights: the weight-0 turns add nothing
    per_row = sum(r["trained_tokens"] for r in renders[:6])
    assert plan["trained_tokens_per_epoch"] == per_row
    series = client.get(f"/v1/jobs/{job['id']}/metrics").json()["series"]
    assert [v for _, v in series["trained_tokens"]] == [per_row]
