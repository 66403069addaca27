"""Dataset jobs end to end: uploads and Hub-shaped directories → validated ChatML artifacts."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from app.chat import validate_conversation
from tests.support import Stack


def conv(i: int, turns: int = 1) -> list[dict[str, str]]:
    out = []
    for t in range(turns):
        out += [{"role": "user", "content": f"Question {i}.{t}: what is {i} + {t}?"},
                {"role": "assistant", "content": f"It is {i + t}."}]
    return out


def upload(client: httpx.Client, name: str, data: bytes) -> dict[str, Any]:
    r = client.post("/v1/files", params={"name": name}, content=data,
                    headers={"content-type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    return r.json()


def jsonl(rows: list[Any]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def run_dataset(client: httpx.Client, spec: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    r = client.post("/v1/jobs", json={"kind": "dataset", "spec": spec})
    assert r.status_code == 201, r.text
    return client.get(f"/v1/jobs/{r.json()['id']}/wait", params={"timeout": timeout}, timeout=timeout + 15).json()


def artifact_rows(client: httpx.Client, artifact_id: str) -> list[dict[str, Any]]:
    r = client.get(f"/v1/artifacts/{artifact_id}/content")
    assert r.status_code == 200
    meta = client.get(f"/v1/artifacts/{artifact_id}").json()
    assert hashlib.sha256(r.content).hexdigest() == meta["sha256"] == r.headers["x-content-sha256"]
    assert len(r.content) == meta["bytes"]
    return [orjson.loads(line) for line in r.content.splitlines()]


def test_upload_with_planted_errors_drops_exactly_those(client: httpx.Client) -> None:
    good = [{"messages": conv(i)} for i in range(40)]
    long_text = "word " * 400
    bad = [
        {"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "yo"}]},
        {"messages": [{"role": "user", "content": "hi"}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                      {"role": "user", "content": "c"}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                      {"role": "assistant", "content": "c"}]},
        {"messages": [{"role": "user", "content": 42}, {"role": "assistant", "content": "b"}]},
        {"messages": conv(3)},  # duplicate of row 4
        {"messages": conv(7)},  # duplicate of row 8
        {"messages": [{"role": "user", "content": long_text}, {"role": "assistant", "content": "ok"}]},
        {"conversation": "not the messages column"},
    ]
    data = jsonl(good + bad)
    file = upload(client, "mixed.jsonl", data)
    assert file["bytes"] == len(data) and file["format"] == "jsonl"

    job = run_dataset(client, {"source": {"type": "artifact", "artifact_id": file["id"]}, "shape": "messages",
                               "max_tokens": 200, "validation_rows": 4, "seed": 7})
    assert job["status"] == "succeeded", job["error"]
    result = job["result"]
    assert result["dropped"] == {"unknown_role": 1, "empty_content": 1, "no_assistant_turn": 1,
                                 "last_turn_not_assistant": 1, "bad_alternation": 1, "non_string_content": 1,
                                 "duplicate": 2, "too_long": 1, "bad_shape": 1}
    assert result["rows_in"] == 50 and result["rows_out"] == 40
    assert result["drop_examples"]["unknown_role"][0]["row"] == 41
    assert result["drop_examples"]["unknown_role"][0]["field"] == "messages[0].role"
    assert result["drop_examples"]["duplicate"][0]["row"] == 47

    train, val = result["splits"]["train"], result["splits"]["validation"]
    assert (train["rows"], val["rows"]) == (36, 4)
    rows = artifact_rows(client, train["artifact_id"]) + artifact_rows(client, val["artifact_id"])
    assert len(rows) == 40 and all(validate_conversation(r["messages"]) is None for r in rows)
    assert sorted(r["messages"][0]["content"] for r in rows) == sorted(g["messages"][0]["content"] for g in good)
    assert 0 < train["trainable_tokens"] < train["tokens"]
    dist = train["token_distribution"]
    assert dist["min"] <= dist["p50"] <= dist["p95"] <= dist["max"] <= 200

    again = run_dataset(client, {"source": {"type": "artifact", "artifact_id": file["id"]}, "shape": "messages",
                                 "max_tokens": 200, "validation_rows": 4, "seed": 7})
    assert artifact_rows(client, again["result"]["train_artifact"]) == artifact_rows(client, train["artifact_id"])


def test_hub_shaped_directory_parquet_and_jsonl(stack: Stack, client: httpx.Client) -> None:
    root = Path(stack.env["TUNEQ_LOCAL_DATASETS_DIR"]) / "org__chat"
    (root / "data").mkdir(parents=True)
    train = [{"conversations": [{"from": "human", "value": f"hello {i}"}, {"from": "gpt", "value": f"hi {i}"}]}
             for i in range(30)]
    pq.write_table(pa.Table.from_pylist(train), root / "data" / "train-00000-of-00001.parquet")
    # Split names follow `datasets`' rules: next to sharded train files, validation is sharded too.
    (root / "data" / "validation-00000-of-00001.jsonl").write_bytes(jsonl(train[:5]))

    job = run_dataset(client, {"source": {"type": "local", "path": "org__chat", "split": "train"}})
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["shape"] == "sharegpt" and job["result"]["rows_out"] == 30
    events = client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
    assert {"type": "shape_detected"} .items() <= next(e for e in events if e["type"] == "shape_detected").items()
    assert any(e["type"] == "progress" and e["data"]["kept"] == 30 for e in events)

    val = run_dataset(client, {"source": {"type": "local", "path": "org__chat", "split": "validation"}})
    assert val["status"] == "succeeded" and val["result"]["rows_out"] == 5


SHAPES: list[tuple[str | dict[str, Any], dict[str, Any], list[dict[str, str]]]] = [
    ("sharegpt", {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                                    {"from": "gpt", "value": "A"}]},
     [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]),
    ("alpaca", {"instruction": "Do X", "input": "with Y", "output": "Done"},
     [{"role": "user", "content": "Do X\n\nwith Y"}, {"role": "assistant", "content": "Done"}]),
    ("prompt_completion", {"prompt": "P", "completion": "C"},
     [{"role": "user", "content": "P"}, {"role": "assistant", "content": "C"}]),
    ("question_answer", {"question": "Q", "answer": "A"},
     [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]),
    ({"messages": "dialog", "role_map": {"me": "user", "bot": "assistant"}, "role_key": "who", "content_key": "text"},
     {"dialog": [{"who": "me", "text": "Q"}, {"who": "bot", "text": "A"}]},
     [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]),
    ({"columns": [{"column": "q", "role": "user"}, {"column": "a", "role": "assistant"}]}, {"a": "A", "q": "Q"},
     [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]),
]


def test_every_supported_shape(client: httpx.Client) -> None:
    for shape, row, expected in SHAPES:
        file = upload(client, "shape.jsonl", jsonl([row]))
        spec = {"source": {"type": "artifact", "artifact_id": file["id"]}, "shape": shape}
        if isinstance(shape, str):
            spec["shape"] = "auto"  # detection must find it
        job = run_dataset(client, spec)
        assert job["status"] == "succeeded", (shape, job["error"])
        if isinstance(shape, str):
            assert job["result"]["shape"] == shape
        assert artifact_rows(client, job["result"]["train_artifact"]) == [{"messages": expected}], shape


def test_system_prompt_and_csv_upload(client: httpx.Client) -> None:
    file = upload(client, "qa.csv", b"question,answer\nWhat?,This.\nWho?,Me.\n")
    job = run_dataset(client, {"source": {"type": "artifact", "artifact_id": file["id"]},
                               "system_prompt": "Be brief.", "shuffle": False})
    assert job["status"] == "succeeded", job["error"]
    rows = artifact_rows(client, job["result"]["train_artifact"])
    assert rows[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert rows[1]["messages"][1] == {"role": "user", "content": "Who?"}


def test_malformed_uploads_fail_naming_the_line(client: httpx.Client) -> None:
    ok = orjson.dumps({"messages": conv(1)}) + b"\n"
    cases = {
        "invalid_utf8": ok + ok + b'{"messages": "\xff\xfe"}\n',
        "not_an_object": ok + ok + b"[1, 2]\n",
        "too_deeply_nested": ok + ok + b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}\n",
        "line_too_long": ok + ok + b'{"messages": "' + b"x" * (50 * 1024 * 1024) + b'"}\n',
    }
    for code, data in cases.items():
        file = upload(client, "bad.jsonl", data)
        job = run_dataset(client, {"source": {"type": "artifact", "artifact_id": file["id"]}, "shape": "messages"})
        assert job["status"] == "failed", code
        assert job["error"]["code"] == code and job["error"]["user_error"] is True
        assert "line 3" in job["error"]["message"].lower() and job["error"]["details"]["line"] == 3, job["error"]
        assert "Traceback" not in job["error"]["message"]
    follow_up = run_dataset(client, {"source": {"type": "artifact", "artifact_id": upload(client, "ok.jsonl", ok)["id"]}})
    assert follow_up["status"] == "succeeded"  # the worker and API are still up


def test_hub_dataset_offline_fails_with_a_clear_error(client: httpx.Client) -> None:
    job = run_dataset(client, {"source": {"type": "hub", "name": "HuggingFaceH4/no_robots"}})
    assert job["status"] == "failed"
    assert job["error"]["code"] == "hub_unreachable"
    assert "HuggingFaceH4/no_robots" in job["error"]["message"] and "Traceback" not in job["error"]["message"]


def test_submit_time_errors(stack: Stack, client: httpx.Client) -> None:
    from tests.conftest import make_client

    file = upload(client, "x.jsonl", jsonl([{"messages": conv(1)}]))
    with make_client(stack.base_url) as other:
        r = other.post("/v1/jobs", json={"kind": "dataset",
                                         "spec": {"source": {"type": "artifact", "artifact_id": file["id"]}}})
        assert r.status_code == 422 and "no artifact" in r.json()["detail"]
        assert other.get(f"/v1/artifacts/{file['id']}").status_code == 404
    r = client.post("/v1/jobs", json={"kind": "dataset", "spec": {"source": {"type": "local", "path": "../../etc"}}})
    assert r.status_code == 422 and "spec.source.path" in r.json()["detail"]
    r = client.post("/v1/jobs", json={"kind": "dataset", "spec": {"source": {"type": "ftp", "url": "x"}}})
    assert r.status_code == 422 and "source" in r.json()["detail"]
    r = client.post("/v1/files", params={"name": "data.xlsx"}, content=b"x")
    assert r.status_code == 422 and "xlsx" in r.json()["detail"]


def test_preview_and_render_show_what_will_be_trained(client: httpx.Client) -> None:
    rows = [{"messages": [{"role": "system", "content": "Sys"}, *conv(i, turns=2)]} for i in range(3)]
    file = upload(client, "r.jsonl", jsonl(rows))
    job = run_dataset(client, {"source": {"type": "artifact", "artifact_id": file["id"]}, "shuffle": False})
    art = job["result"]["train_artifact"]
    preview = client.get(f"/v1/artifacts/{art}/preview", params={"rows": 2}).json()["rows"]
    assert preview == rows[:2]

    r = client.post(f"/v1/artifacts/{art}/render", params={"row": 1}).json()
    assert r["tokens"][:3] == [151644, 8948, 198]  # <|im_start|>system\n
    assert len(r["tokens"]) == len(r["pieces"]) == len(r["weights"]) == r["num_tokens"]
    text = "".join(r["pieces"])
    assert text.startswith("<|im_start|>system\nSys<|im_end|>\n<|im_start|>user\nQuestion 1.0")
    trained = "".join(p for p, w in zip(r["pieces"], r["weights"], strict=True) if w)
    assert trained == "It is 1.<|im_end|>" + "<think>\n\n</think>\n\nIt is 2.<|im_end|>"
    last = client.post(f"/v1/artifacts/{art}/render", params={"row": 1, "train_on": "last_assistant"}).json()
    assert "".join(p for p, w in zip(last["pieces"], last["weights"], strict=True) if w) == (
        "<think>\n\n</think>\n\nIt is 2.<|im_end|>")
    assert client.post(f"/v1/artifacts/{art}/render", params={"row": 99}).status_code == 404


def test_three_sources_mixed_by_weight_with_provenance(stack: Stack, client: httpx.Client) -> None:
    """An uploaded ChatML file, an Alpaca CSV upload and a local ShareGPT Parquet directory, mixed 2:1:1 into one
    ChatML split; its provenance side file names each row's source and original row."""
    chats = upload(client, "chats.jsonl", jsonl([{"messages": conv(i)} for i in range(40)]))
    csv = "instruction,input,output\n" + "".join(f"Explain step {i},,Step {i} is next.\n" for i in range(30))
    alpaca = upload(client, "alpaca.csv", csv.encode())
    root = Path(stack.env["TUNEQ_LOCAL_DATASETS_DIR"]) / "org__mix"
    (root / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([
        {"conversations": [{"from": "human", "value": f"hello {i}"}, {"from": "gpt", "value": f"hi {i}"}]}
        for i in range(30)]), root / "data" / "train-00000-of-00001.parquet")
    job = run_dataset(client, {"sources": [
        {"type": "artifact", "artifact_id": chats["id"], "alias": "chats", "weight": 2},
        {"type": "artifact", "artifact_id": alpaca["id"], "alias": "alpaca", "shape": "alpaca", "weight": 1},
        {"type": "local", "path": "org__mix", "alias": "parquet", "weight": 1, "max_examples": 20},
    ], "seed": 3})
    assert job["status"] == "succeeded", job["error"]
    result = job["result"]
    by_source = {s["name"]: s for s in result["sources"]}
    assert set(by_source) == {"chats", "alpaca", "parquet"}
    # The scarcest share decides the size: the local source gives at most 20 rows, a quarter of the output.
    assert by_source["parquet"]["rows_out"] == 20 and by_source["chats"]["rows_out"] == 40
    assert by_source["alpaca"]["rows_out"] == 20 and result["rows_out"] == 80

    rows = artifact_rows(client, result["train_artifact"])
    provenance_id = result["splits"]["train"]["provenance_artifact"]
    meta = client.get(f"/v1/artifacts/{provenance_id}").json()
    assert meta["kind"] == "provenance"
    lines = [orjson.loads(x) for x in client.get(f"/v1/artifacts/{provenance_id}/content").text.splitlines()]
    assert len(lines) == len(rows) == 80
    for row, origin in zip(rows, lines, strict=True):
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        text = row["messages"][0]["content"]
        if origin["source"] == "chats":
            assert text == conv(origin["row"] - 1)[0]["content"]
        elif origin["source"] == "alpaca":
            assert text == f"Explain step {origin['row'] - 2}"  # a CSV's row is its line; line 1 is the header
        else:
            assert text == f"hello {origin['row'] - 1}"


def test_sources_spec_errors_name_the_field(stack: Stack, client: httpx.Client) -> None:
    ok = upload(client, "ok.jsonl", jsonl([{"messages": conv(1)}]))["id"]

    def refused(spec: dict[str, Any]) -> str:
        r = client.post("/v1/jobs", json={"kind": "dataset", "spec": spec})
        assert r.status_code == 422, r.text
        return r.text

    assert "spec.sources[1].artifact_id: no artifact art_missing" in refused({"sources": [
        {"type": "artifact", "artifact_id": ok}, {"type": "artifact", "artifact_id": "art_missing"}]})
    assert "spec.sources[1].path" in refused({"sources": [
        {"type": "artifact", "artifact_id": ok}, {"type": "local", "path": "no_such_dir"}]})
    assert "source" in refused({"source": {"type": "artifact", "artifact_id": ok},
                                "sources": [{"type": "artifact", "artifact_id": ok}]})
    assert "weight" in refused({"sources": [{"type": "artifact", "artifact_id": ok, "weight": 0}]})
    assert "sources" in refused({"sources": [{"type": "artifact", "artifact_id": ok}] * 17})
