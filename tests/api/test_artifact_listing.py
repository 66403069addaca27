"""Finding uploads and artifacts again (GET /v1/files, GET /v1/artifacts) and deleting them (row and file)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import make_client
from tests.support import Stack

ROWS = b"".join(orjson.dumps({"messages": [{"role": "user", "content": f"Hi {i}?"},
                                           {"role": "assistant", "content": f"Hello {i}."}]}) + b"\n"
                for i in range(12))


def upload(client: httpx.Client, name: str, data: bytes = ROWS) -> str:
    r = client.post("/v1/files", params={"name": name}, content=data,
                    headers={"content-type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def finished(client: httpx.Client, job_id: str) -> dict[str, Any]:
    for _ in range(6):
        r = client.get(f"/v1/jobs/{job_id}/wait", params={"timeout": 15})
        assert r.status_code == 200, r.text
        if r.json()["status"] in ("succeeded", "failed", "cancelled"):
            return dict(r.json())
    raise AssertionError(f"job {job_id} did not end")


def dataset_job(client: httpx.Client, artifact_id: str, **extra: Any) -> dict[str, Any]:
    r = client.post("/v1/jobs", json={"kind": "dataset", "spec": {
        "source": {"type": "artifact", "artifact_id": artifact_id}, "validation_rows": 2}, **extra})
    assert r.status_code == 201, r.text
    return dict(r.json())


def all_pages(client: httpx.Client, route: str, **params: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        r = client.get(route, params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        page = r.json()
        out.extend(page["data"])
        if not page["has_more"]:
            assert page["next_cursor"] is None
            return out
        cursor = page["next_cursor"]
    raise AssertionError("paging never ended")


def ids(client: httpx.Client, route: str, **params: Any) -> list[str]:
    r = client.get(route, params=params)
    assert r.status_code == 200, r.text
    return [a["id"] for a in r.json()["data"]]


def stored_path(stack: Stack, artifact_id: str) -> Path:
    from sqlalchemy import select

    from app.db import session_scope
    from app.models import Artifact

    with session_scope() as session:
        uri = session.scalar(select(Artifact.uri).where(Artifact.id == artifact_id))
    assert uri is not None, artifact_id
    return Path(stack.env["TUNEQ_VAR_DIR"]) / "artifacts" / uri


@pytest.fixture(scope="module")
def catalog(stack: Stack) -> Any:
    """A team with five uploads (made in this order) and a dataset job's two outputs."""
    with make_client(stack.base_url) as c:
        made = {}
        for name in ("a.jsonl", "train-1.jsonl", "train-2.jsonl", "data.csv", "notes.json"):
            data = b"q,a\n1,2\n" if name.endswith(".csv") else (b'{"x": 1}' if name.endswith(".json") else ROWS)
            made[name] = upload(c, name, data)
            if name == "train-2.jsonl":
                time.sleep(0.01)
                middle = time.time()
                time.sleep(0.01)
        job = finished(c, dataset_job(c, made["a.jsonl"])["id"])
        assert job["status"] == "succeeded", job
        yield c, made, job, middle


def test_files_lists_the_teams_uploads_newest_first_across_pages(catalog: Any) -> None:
    c, made, job, _ = catalog
    listed = all_pages(c, "/v1/files", limit=2)
    assert [a["id"] for a in listed] == list(reversed(made.values()))
    assert {a["kind"] for a in listed} == {"upload"}
    assert [a["name"] for a in listed][-1] == "a.jsonl"
    everything = all_pages(c, "/v1/artifacts", limit=3)
    outputs = set(ids(c, "/v1/artifacts", job_id=job["id"]))  # the splits (and any side files, e.g. provenance)
    assert {job["result"]["train_artifact"], job["result"]["validation_artifact"]} <= outputs
    assert {a["id"] for a in everything} == {*made.values(), *outputs}
    assert len(everything) == len({a["id"] for a in everything}) == 5 + len(outputs)  # no row twice, none skipped
    assert {a["id"] for a in everything[:len(outputs)]} == outputs  # the job's outputs are the newest
    times = [a["created_at"] for a in everything]
    assert times == sorted(times, reverse=True)


def test_every_filter_narrows_the_list(catalog: Any) -> None:
    c, made, job, middle = catalog
    outputs = {job["result"]["train_artifact"], job["result"]["validation_artifact"]}
    assert set(ids(c, "/v1/artifacts", kind="dataset")) == outputs
    assert set(ids(c, "/v1/artifacts", kind="upload")) == set(made.values())
    assert set(ids(c, "/v1/artifacts", job_id=job["id"])) >= outputs
    assert not set(ids(c, "/v1/artifacts", job_id=job["id"])) & set(made.values())
    assert ids(c, "/v1/artifacts", name="train.jsonl") == [job["result"]["train_artifact"]]
    assert ids(c, "/v1/files", name="train-1.jsonl") == [made["train-1.jsonl"]]
    assert set(ids(c, "/v1/files", name="train*")) == {made["train-1.jsonl"], made["train-2.jsonl"]}
    prefixed = c.get("/v1/artifacts", params={"name": "train*"}).json()["data"]
    assert {a["id"] for a in prefixed} >= {made["train-1.jsonl"], made["train-2.jsonl"], job["result"]["train_artifact"]}
    assert all(a["name"].startswith("train") for a in prefixed)
    assert ids(c, "/v1/files", name="TRAIN*") == []  # names compare case-sensitively
    assert ids(c, "/v1/files", name="train_*") == []  # '_' is a character, not a wildcard
    assert ids(c, "/v1/files", format="csv") == [made["data.csv"]]
    assert set(ids(c, "/v1/artifacts", format="chatml_jsonl")) == outputs
    after = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(middle)) + f".{int(middle % 1 * 1e6):06d}Z"
    assert set(ids(c, "/v1/files", created_after=after)) == {made["data.csv"], made["notes.json"]}
    assert ids(c, "/v1/artifacts", kind="adapter") == []


@pytest.mark.parametrize("route, params, field", [
    ("/v1/artifacts", {"kind": "Not A Kind"}, "kind"),
    ("/v1/artifacts", {"kind": "x" * 33}, "kind"),
    ("/v1/files", {"format": "csv\x00"}, "format"),
    ("/v1/artifacts", {"job_id": "../etc"}, "job_id"),
    ("/v1/files", {"name": "a\x00b"}, "name"),
    ("/v1/files", {"name": "line\nbreak*"}, "name"),
    ("/v1/files", {"name": "é" * 200}, "name"),
    ("/v1/files", {"cursor": "not-a-cursor"}, "cursor"),
    ("/v1/artifacts", {"cursor": "OTk5OTk5OTk5OTk5OTk5OTk5OTk6ZmlsZV8w"}, "cursor"),  # a time past any calendar
    ("/v1/files", {"limit": 0}, "limit"),
    ("/v1/artifacts", {"limit": 201}, "limit"),
    ("/v1/artifacts", {"created_after": "yesterday"}, "created_after"),
    ("/v1/files", {"label": "no-colon"}, "label"),
    ("/v1/artifacts", {"label": ":value"}, "label"),
    ("/v1/artifacts", {"label": "name:"}, "label"),
    ("/v1/files", {"label": "a:b\x00"}, "label"),
    ("/v1/artifacts", {"label": "x" * 201 + ":v"}, "label"),
])
def test_a_bad_filter_is_a_422_naming_it(client: httpx.Client, route: str, params: dict[str, Any],
                                         field: str) -> None:
    r = client.get(route, params=params)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert field in r.json()["detail"] or any(field in e["loc"] for e in r.json()["errors"]), r.text


def test_another_teams_artifacts_are_never_listed_nor_deleted(stack: Stack, catalog: Any) -> None:
    c, made, job, _ = catalog
    theirs = {*made.values(), job["result"]["train_artifact"]}
    with make_client(stack.base_url) as other:
        mine = upload(other, "a.jsonl")
        assert ids(other, "/v1/files") == [mine]
        assert ids(other, "/v1/artifacts", job_id=job["id"]) == []
        assert ids(other, "/v1/artifacts", name="a.jsonl") == [mine]
        for artifact_id in theirs:
            assert other.delete(f"/v1/artifacts/{artifact_id}").status_code == 404
        assert other.delete(f"/v1/files/{made['a.jsonl']}").status_code == 404
    assert set(ids(c, "/v1/artifacts", limit=200)) >= theirs  # still all there
    assert mine not in ids(c, "/v1/files", limit=200)
    assert stored_path(stack, made["a.jsonl"]).is_file()


def test_delete_removes_the_row_and_the_file(stack: Stack, client: httpx.Client) -> None:
    file_id = upload(client, "gone.jsonl")
    path = stored_path(stack, file_id)
    assert path.is_file()
    r = client.delete(f"/v1/files/{file_id}")
    assert r.status_code == 204, r.text
    assert not path.exists() and not path.parent.exists()  # the upload's folder goes too
    for route in (f"/v1/artifacts/{file_id}", f"/v1/artifacts/{file_id}/content", f"/v1/artifacts/{file_id}/preview"):
        assert client.get(route).status_code == 404
    assert client.delete(f"/v1/artifacts/{file_id}").status_code == 404
    for odd in ("file_%00", "file%0a1", "x" * 300):
        assert client.delete(f"/v1/artifacts/{odd}").status_code in (404, 422)
        assert client.delete(f"/v1/files/{odd}").status_code in (404, 422)
        for route in (f"/v1/artifacts/{odd}", f"/v1/artifacts/{odd}/content", f"/v1/artifacts/{odd}/preview"):
            assert client.get(route).status_code in (404, 422)
    assert ids(client, "/v1/files") == []
    assert client.post("/v1/jobs", json={"kind": "dataset", "spec": {
        "source": {"type": "artifact", "artifact_id": file_id}}}).status_code == 422


def test_a_jobs_output_is_deleted_by_artifacts_not_by_files(stack: Stack, client: httpx.Client) -> None:
    job = finished(client, dataset_job(client, upload(client, "rows.jsonl"))["id"])
    assert job["status"] == "succeeded", job
    train = job["result"]["train_artifact"]
    path = stored_path(stack, train)
    assert client.delete(f"/v1/files/{train}").status_code == 404  # /v1/files is for uploads
    assert path.is_file()
    assert client.delete(f"/v1/artifacts/{train}").status_code == 204
    assert not path.exists()
    assert stored_path(stack, job["result"]["validation_artifact"]).is_file()  # its sibling stays
    left = ids(client, "/v1/artifacts", job_id=job["id"])
    assert job["result"]["validation_artifact"] in left and train not in left


def test_delete_is_refused_while_an_unfinished_job_uses_it(stack: Stack, client: httpx.Client) -> None:
    file_id = upload(client, "busy.jsonl")
    path = stored_path(stack, file_id)
    long = client.post("/v1/jobs", json={"kind": "test", "spec": {"steps": 600, "step_seconds": 0.5}}).json()
    pending = dataset_job(client, file_id, depends_on=[long["id"]])
    assert pending["status"] == "pending", pending
    for route in (f"/v1/artifacts/{file_id}", f"/v1/files/{file_id}"):
        r = client.delete(route)
        assert r.status_code == 409, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert pending["id"] in r.json()["detail"], r.text
    assert path.is_file() and client.get(f"/v1/artifacts/{file_id}").status_code == 200
    assert client.post(f"/v1/jobs/{pending['id']}/cancel").status_code == 200
    client.post(f"/v1/jobs/{long['id']}/cancel")
    assert finished(client, pending["id"])["status"] == "cancelled"
    assert client.delete(f"/v1/artifacts/{file_id}").status_code == 204  # the job that used it has ended
    assert not path.exists()


# ---- names and labels ---------------------------------------------------------------------------------------

def test_an_upload_gets_a_display_name_and_labels_shown_by_every_read(client: httpx.Client) -> None:
    r = client.post("/v1/files", params=[("filename", "mix.jsonl"), ("name", "Stage 1 mix (v2)"),
                                         ("label", "stage:1"), ("label", "owner:ana:b")],
                    content=ROWS, headers={"content-type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["name"] == "Stage 1 mix (v2)" and made["format"] == "jsonl"  # the format comes from the file name
    assert made["labels"] == {"stage": "1", "owner": "ana:b"}  # split at the first ':'
    assert made["meta"]["filename"] == "mix.jsonl"
    assert client.get(f"/v1/artifacts/{made['id']}").json()["labels"] == made["labels"]
    [listed] = client.get("/v1/files").json()["data"]
    assert listed["name"] == "Stage 1 mix (v2)" and listed["labels"] == made["labels"]
    plain = client.get(f"/v1/artifacts/{upload(client, 'plain.jsonl')}").json()
    assert plain["name"] == "plain.jsonl" and plain["labels"] == {}  # name alone: as before
    content = client.get(f"/v1/artifacts/{made['id']}/content")
    assert content.status_code == 200 and content.content == ROWS


@pytest.mark.parametrize("params, field", [
    ([("format", "jsonl")], "name"),  # neither name nor filename
    ([("filename", "a/b.jsonl")], "filename"),
    ([("filename", "a.jsonl"), ("name", "x\ty")], "name"),
    ([("name", "a.jsonl"), ("label", "nocolon")], "label"),
    ([("name", "a.jsonl"), ("label", "k:1"), ("label", "k:2")], "label"),  # a name twice
    ([("name", "a.jsonl"), ("label", "k:\x07")], "label"),
    ([("name", "a.jsonl"), *[("label", f"k{i}:v") for i in range(51)]], "label"),
])
def test_a_bad_upload_name_or_label_is_a_422_naming_it(client: httpx.Client, params: list[tuple[str, str]],
                                                       field: str) -> None:
    r = client.post("/v1/files", params=params, content=ROWS, headers={"content-type": "application/octet-stream"})
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"] or any(field in e["loc"] for e in r.json()["errors"]), r.text
    assert ids(client, "/v1/files") == []


def test_patch_renames_and_merges_labels(client: httpx.Client) -> None:
    file_id = upload(client, "a.jsonl")
    r = client.patch(f"/v1/files/{file_id}", json={"name": "renamed.jsonl", "labels": {"stage": "1", "old": "x"}})
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "renamed.jsonl" and r.json()["labels"] == {"stage": "1", "old": "x"}
    r = client.patch(f"/v1/artifacts/{file_id}", json={"labels": {"stage": "2", "old": None, "new": "y"}})
    assert r.status_code == 200, r.text
    assert r.json()["labels"] == {"stage": "2", "new": "y"}  # set, removed, added; the name stays
    got = client.get(f"/v1/artifacts/{file_id}").json()
    assert got["name"] == "renamed.jsonl" and got["labels"] == {"stage": "2", "new": "y"}
    assert ids(client, "/v1/files", name="renamed.jsonl") == [file_id]
    assert ids(client, "/v1/files", name="a.jsonl") == []
    assert client.patch(f"/v1/files/{file_id}", json={}).json()["labels"] == {"stage": "2", "new": "y"}


@pytest.mark.parametrize("body, field", [
    ({"name": "a/b"}, "name"),
    ({"name": ""}, "name"),
    ({"name": ".."}, "name"),
    ({"labels": {"k": "v\n"}}, "labels"),
    ({"labels": {"": "v"}}, "labels"),
    ({"labels": {f"k{i}": "v" for i in range(51)}}, "labels"),  # more than 50 would remain
    ({"label": {"k": "v"}}, "label"),  # a typo is an error, not ignored
])
def test_a_bad_patch_is_a_422_naming_the_field(client: httpx.Client, body: dict[str, Any], field: str) -> None:
    file_id = upload(client, "a.jsonl")
    r = client.patch(f"/v1/artifacts/{file_id}", json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert field in r.json()["detail"] or any(field in e["loc"] for e in r.json()["errors"]), r.text
    got = client.get(f"/v1/artifacts/{file_id}").json()
    assert got["name"] == "a.jsonl" and got["labels"] == {}


def test_label_filter_on_both_lists(client: httpx.Client) -> None:
    one = upload(client, "one.jsonl")
    two = upload(client, "two.jsonl")
    client.patch(f"/v1/files/{one}", json={"labels": {"stage": "1", "team": "nlp"}}).raise_for_status()
    client.patch(f"/v1/files/{two}", json={"labels": {"stage": "2", "team": "nlp"}}).raise_for_status()
    assert ids(client, "/v1/files", label="stage:1") == [one]
    assert ids(client, "/v1/artifacts", label="stage:2") == [two]
    assert ids(client, "/v1/artifacts", label="team:nlp") == [two, one]
    assert ids(client, "/v1/files", label="team:NLP") == []  # values compare exactly
    assert ids(client, "/v1/files", label="missing:1") == []
    assert ids(client, "/v1/files", label="team:nlp", name="one*") == [one]  # filters combine


def test_a_jobs_outputs_start_with_the_jobs_labels(client: httpx.Client) -> None:
    job = finished(client, dataset_job(client, upload(client, "rows.jsonl"), labels={"run": "r1", "stage": "1"})["id"])
    assert job["status"] == "succeeded", job
    outputs = client.get("/v1/artifacts", params={"job_id": job["id"]}).json()["data"]
    assert outputs and all(a["labels"] == {"run": "r1", "stage": "1"} for a in outputs)
    assert set(ids(client, "/v1/artifacts", label="run:r1")) == {a["id"] for a in outputs}
    assert ids(client, "/v1/files", label="run:r1") == []  # the upload it read keeps its own (none)
    train = job["result"]["train_artifact"]
    r = client.patch(f"/v1/artifacts/{train}", json={"name": "stage1-train.jsonl", "labels": {"run": None}})
    assert r.status_code == 200 and r.json()["labels"] == {"stage": "1"}, r.text
    assert client.patch(f"/v1/files/{train}", json={"name": "x.jsonl"}).status_code == 404  # not an upload
    assert client.get(f"/v1/artifacts/{train}").json()["name"] == "stage1-train.jsonl"


def test_another_teams_artifacts_cannot_be_renamed_or_relabelled(stack: Stack, catalog: Any) -> None:
    c, made, job, _ = catalog
    train = job["result"]["train_artifact"]
    with make_client(stack.base_url) as other:
        for route in (f"/v1/files/{made['a.jsonl']}", f"/v1/artifacts/{made['a.jsonl']}", f"/v1/artifacts/{train}"):
            r = other.patch(route, json={"name": "mine.jsonl", "labels": {"owner": "them"}})
            assert r.status_code == 404, r.text
        for odd in ("file_%00", "x" * 300):
            assert other.patch(f"/v1/artifacts/{odd}", json={"name": "a.jsonl"}).status_code in (404, 422)
        assert ids(other, "/v1/artifacts", label="owner:them") == []
    for artifact_id in (made["a.jsonl"], train):
        got = c.get(f"/v1/artifacts/{artifact_id}").json()
        assert got["name"] != "mine.jsonl" and "owner" not in got["labels"]
