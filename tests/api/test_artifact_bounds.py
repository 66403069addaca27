"""Uploads that fail cleanly, bounded previews, and paged job outputs (the hardening of artifacts)."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from tests.conftest import make_client
from tests.support import Stack, free_port, wait_until

MAX_UPLOAD, QUOTA, MAX_ROW = 4000, 10_000, 1000


def artifact_root(env: dict[str, str]) -> Path:
    return Path(env["TUNEQ_VAR_DIR"]) / "artifacts"


def temp_files(env: dict[str, str]) -> list[Path]:
    # os.walk skips directories the server removes while we look (rglob raises on them)
    return [Path(d, f) for d, _, files in os.walk(artifact_root(env)) for f in files if f.endswith(".tmp")]


def upload(client: httpx.Client, name: str, data: bytes) -> httpx.Response:
    return client.post("/v1/files", params={"name": name}, content=data,
                       headers={"content-type": "application/octet-stream"})


@pytest.fixture(scope="module")
def small_api(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A second API on the same database with small limits: upload size, team quota, preview row size."""
    env = {**stack.env, "TUNEQ_MAX_UPLOAD_BYTES": str(MAX_UPLOAD), "TUNEQ_UPLOAD_QUOTA_BYTES": str(QUOTA),
           "TUNEQ_PREVIEW_MAX_ROW_BYTES": str(MAX_ROW), "TUNEQ_RUN_REAPER": "0"}
    s = Stack(env=env, base_url=f"http://127.0.0.1:{free_port()}", logs=tmp_path_factory.mktemp("small-api"))
    s.start_api()
    yield s
    s.stop()


@pytest.fixture
def small(small_api: Stack) -> Iterator[httpx.Client]:
    with make_client(small_api.base_url) as c:
        yield c


@pytest.mark.parametrize("name, why", [
    ("..", "'.' or '..'"), (".", "'.' or '..'"), ("a/b.jsonl", "path separator"), ("a\\b.jsonl", "path separator"),
    ("bad\x00.jsonl", "control character"), ("line\nbreak.jsonl", "control character"),
    ("é" * 127 + ".jsonl", "bytes of UTF-8"),
])
def test_bad_upload_names_are_422_naming_name_and_leave_nothing(stack: Stack, client: httpx.Client, name: str,
                                                                why: str) -> None:
    r = upload(client, name, b'{"a": 1}\n')
    assert r.status_code == 422, r.text
    body = r.json()
    assert "name" in body["detail"] and why in body["detail"]
    assert body["errors"][0]["loc"] == ["query", "name"]
    assert temp_files(stack.env) == []


@pytest.mark.parametrize("name", ["x" * 249 + ".jsonl", "é" * 124 + ".jsonl", "données d'été.jsonl"])
def test_long_and_unicode_names_are_stored_under_a_safe_name(client: httpx.Client, name: str) -> None:
    r = upload(client, name, b'{"a": 1}\n')
    assert r.status_code == 201, r.text
    assert r.json()["name"] == name
    download = client.get(f"/v1/artifacts/{r.json()['id']}/content")
    assert download.status_code == 200 and download.content == b'{"a": 1}\n'


def test_uploaded_file_is_private(stack: Stack, client: httpx.Client) -> None:
    artifact = upload(client, "private.jsonl", b'{"a": 1}\n').json()
    [path] = [p for p in artifact_root(stack.env).glob(f"*/{artifact['id']}/*") if p.is_file()]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700


def test_worker_written_artifact_is_private(backend: dict[str, str]) -> None:
    from app.services import artifacts

    writer = artifacts.AtomicWriter(artifacts.attempt_path("team_mode", "job_mode", 1, "out.jsonl"))
    writer.write(b"{}\n")
    writer.commit()
    assert stat.S_IMODE(writer.path.stat().st_mode) == 0o600
    for directory in (writer.path.parent, writer.path.parent.parent, writer.path.parent.parent.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_upload_over_the_size_limit_is_413_and_leaves_no_temp_file(small_api: Stack, small: httpx.Client) -> None:
    r = upload(small, "big.jsonl", b"x" * (MAX_UPLOAD + 1))
    assert r.status_code == 413 and "TUNEQ_MAX_UPLOAD_BYTES" in r.json()["detail"]
    assert temp_files(small_api.env) == []


def test_empty_upload_is_422_and_leaves_nothing(stack: Stack, client: httpx.Client) -> None:
    before = {p for p in artifact_root(stack.env).glob("*/file_*")}
    r = upload(client, "empty.jsonl", b"")
    assert r.status_code == 422 and "empty" in r.json()["detail"]
    assert temp_files(stack.env) == []
    assert {p for p in artifact_root(stack.env).glob("*/file_*")} == before  # not even an empty folder


def test_client_gone_mid_upload_leaves_no_temp_file(small_api: Stack, small: httpx.Client) -> None:
    url = urlsplit(small_api.base_url)
    key = small.headers["authorization"]
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall(f"POST /v1/files?name=gone.jsonl HTTP/1.1\r\nHost: x\r\nAuthorization: {key}\r\n"
                     "Content-Type: application/octet-stream\r\nContent-Length: 3000\r\n\r\n".encode() + b"y" * 1000)
        wait_until(lambda: temp_files(small_api.env), 10, "the upload to start writing")
    wait_until(lambda: not temp_files(small_api.env), 10, "the abandoned upload's temp file to go")


def test_team_upload_quota_counts_stored_uploads(small: httpx.Client) -> None:
    for i in range(3):
        assert upload(small, f"part{i}.jsonl", b"z" * 3000).status_code == 201
    r = upload(small, "over.jsonl", b"z" * 2000)  # 9000 in use: over the quota during the stream
    assert r.status_code == 413
    assert "TUNEQ_UPLOAD_QUOTA_BYTES" in r.json()["detail"] and "9000 bytes are in use" in r.json()["detail"]
    assert upload(small, "fits.jsonl", b"z" * 1000).status_code == 201  # exactly at the quota
    r = upload(small, "more.jsonl", b"z")  # checked before the stream
    assert r.status_code == 413 and "10000 bytes are in use" in r.json()["detail"]


def test_preview_refuses_a_row_over_the_limit_without_loading_it(small: httpx.Client) -> None:
    rows = [orjson.dumps({"i": i}) for i in range(3)] + [orjson.dumps({"i": 3, "pad": "p" * 3000})]
    artifact = upload(small, "rows.jsonl", b"\n".join(rows) + b"\n").json()
    ok = small.get(f"/v1/artifacts/{artifact['id']}/preview", params={"rows": 3})
    assert ok.status_code == 200 and [r["i"] for r in ok.json()["rows"]] == [0, 1, 2]
    r = small.get(f"/v1/artifacts/{artifact['id']}/preview", params={"rows": 5})
    assert r.status_code == 422
    assert r.json()["detail"].startswith(f"row 3 is {len(rows[3]) + 1} bytes; preview shows rows up to {MAX_ROW} "
                                         "bytes")
    assert "download the artifact instead" in r.json()["detail"]


def test_render_refuses_a_row_over_the_limit(small: httpx.Client) -> None:
    rows = [{"messages": [{"role": "user", "content": f"Question {i}: " + "why " * 250},
                          {"role": "assistant", "content": f"Because {i}."}]} for i in range(3)]
    upload_id = upload(small, "long.jsonl", b"".join(orjson.dumps(r) + b"\n" for r in rows)).json()["id"]
    job = small.post("/v1/jobs", json={"kind": "dataset", "spec": {
        "source": {"type": "artifact", "artifact_id": upload_id}, "shape": "messages"}}).json()
    done = small.get(f"/v1/jobs/{job['id']}/wait", params={"timeout": 60}).json()
    assert done["status"] == "succeeded", done["error"]
    train = done["result"]["train_artifact"]
    r = small.post(f"/v1/artifacts/{train}/render", params={"row": 0})
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("row 0 is ") and f"rows up to {MAX_ROW} bytes" in r.json()["detail"]
    assert small.post(f"/v1/artifacts/{train}/render", params={"row": 2**40}).status_code == 422


def job_id(client: httpx.Client) -> str:
    r = client.post("/v1/jobs", json={"kind": "test", "spec": {}})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def record(job: str, steps: range, names: tuple[str, ...] = ("loss", "lr")) -> None:
    from app.db import session_scope
    from app.services import training

    with session_scope() as session:
        for step in steps:
            training.record_metrics(session, job, step, {n: step / 10 for n in names})
        session.commit()


def test_metrics_are_paged_by_step(client: httpx.Client) -> None:
    job = job_id(client)
    record(job, range(1, 26))
    page = client.get(f"/v1/jobs/{job}/metrics", params={"limit": 10}).json()
    assert page["has_more"] and page["next_cursor"] == 10
    assert [s for s, _ in page["series"]["loss"]] == list(range(1, 11)) and len(page["series"]["lr"]) == 10
    steps: list[int] = []
    cursor: Any = -1
    while cursor is not None:
        page = client.get(f"/v1/jobs/{job}/metrics", params={"limit": 10, "after_step": cursor,
                                                             "names": "loss"}).json()
        assert set(page["series"]) <= {"loss"}
        steps += [s for s, _ in page["series"].get("loss", [])]
        cursor = page["next_cursor"]
    assert steps == list(range(1, 26))
    whole = client.get(f"/v1/jobs/{job}/metrics").json()
    assert not whole["has_more"] and whole["next_cursor"] is None and len(whole["series"]["loss"]) == 25


def test_metrics_download_streams_every_row(client: httpx.Client) -> None:
    job = job_id(client)
    record(job, range(1, 8))
    r = client.get(f"/v1/jobs/{job}/metrics.jsonl")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    lines = [orjson.loads(line) for line in r.content.splitlines()]
    assert lines[:2] == [{"step": 1, "name": "loss", "value": 0.1}, {"step": 1, "name": "lr", "value": 0.1}]
    assert len(lines) == 14
    csv = client.get(f"/v1/jobs/{job}/metrics.csv", params={"names": "lr", "after_step": 5})
    assert csv.text.splitlines() == ["step,name,value", "6,lr,0.6", "7,lr,0.7"]
    same = client.get(f"/v1/jobs/{job}/metrics", params={"format": "csv", "names": "lr", "after_step": 5})
    assert same.headers["content-type"].startswith("text/csv") and same.text == csv.text
    assert client.get(f"/v1/jobs/{job}/metrics", params={"format": "jsonl"}).content == r.content
    assert client.get("/v1/jobs/job_nope/metrics.jsonl").status_code == 404
    assert client.get("/v1/jobs/job_nope/metrics", params={"format": "csv"}).status_code == 404
    assert client.get(f"/v1/jobs/{job}/metrics.xml").status_code == 422


@pytest.mark.parametrize("path, params, field", [
    ("metrics", {"after_step": 2**64}, "after_step"), ("metrics", {"after_step": 2**31}, "after_step"),
    ("metrics", {"limit": 10_001}, "limit"), ("metrics", {"limit": 0}, "limit"),
    ("metrics.jsonl", {"after_step": 2**64}, "after_step"),
    ("checkpoints", {"limit": 10_001}, "limit"), ("checkpoints", {"after": "ckpt_unknown"}, "after"),
    ("checkpoints", {"after": "c" * 65}, "after"),
    ("items", {"after": 2**64}, "after"), ("items", {"limit": 201}, "limit"),
])
def test_out_of_range_cursors_are_422_naming_the_field(client: httpx.Client, path: str, params: dict[str, Any],
                                                       field: str) -> None:
    r = client.get(f"/v1/jobs/{job_id(client)}/{path}", params=params)
    assert r.status_code == 422, r.text
    assert field in r.text


def test_checkpoints_are_paged(client: httpx.Client) -> None:
    from app.db import session_scope
    from app.services import training

    job = job_id(client)
    with session_scope() as session:
        for step in (3, 6, 9, 9, 12):
            training.add_checkpoint(session, job_id=job, step=step, kind="state", uri=f"tinker://x/{step}",
                                    next_step=step, data={})
        session.commit()
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"after": cursor} if cursor else {})}
        page = client.get(f"/v1/jobs/{job}/checkpoints", params=params).json()
        seen += [c["step"] for c in page["data"]]
        assert len(page["data"]) <= 2
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
    assert seen == [3, 6, 9, 9, 12]
    assert len(client.get(f"/v1/jobs/{job}/checkpoints").json()["data"]) == 5


def test_routes_declare_their_response_bodies(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    for path, method in [("/v1/files", "post"), ("/v1/artifacts/{artifact_id}", "get"),
                         ("/v1/artifacts/{artifact_id}/preview", "get"),
                         ("/v1/artifacts/{artifact_id}/render", "post"), ("/v1/jobs/{job_id}/items", "get"),
                         ("/v1/jobs/{job_id}/metrics", "get"), ("/v1/jobs/{job_id}/checkpoints", "get")]:
        responses = spec["paths"][path][method]["responses"]
        ok = responses.get("200") or responses["201"]
        assert "$ref" in ok["content"]["application/json"]["schema"], path
    content = spec["paths"]["/v1/artifacts/{artifact_id}/content"]["get"]["responses"]["200"]["content"]
    assert "application/octet-stream" in content
