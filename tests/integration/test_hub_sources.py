"""Hub sources read for real: dataset jobs through the API and a real worker whose `datasets` loader streams from
a loopback stand-in for the Hugging Face Hub (tests/fakes/hf_hub_server.py, set as the worker's HF_ENDPOINT).

The fake serves `tuneq-test/chat-mix`, with two configs declared in its README (`qa`: Parquet, the default;
`dialog`: JSONL) and two revisions (`main`, and `legacy`, tagged `v1.0`, whose rows differ), and
`tuneq-test/gated-chat`, gated like the Hub gates a dataset (401 without a token, 403 with one without access)."""

from __future__ import annotations

import hashlib
import io
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.fakes.hf_hub_server import FakeHub
from tests.support import Stack

REPO, GATED, BIG = "tuneq-test/chat-mix", "tuneq-test/gated-chat", "tuneq-test/big-qa"
BIG_ROWS = 150_000  # ~37 MB of JSON Lines: several times what `datasets` reads at once from a JSON file
HUB_TOKEN = "hf_tuneqFakeHubToken0123456789"
OTHER_TOKEN = "hf_someoneWithoutAccess98765"
HF_ENV_DROPPED = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HF_ENDPOINT",
                  "HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE")

README = b"""---
configs:
- config_name: qa
  default: true
  data_files:
  - split: train
    path: qa/train-*.parquet
  - split: test
    path: qa/test-*.parquet
- config_name: dialog
  data_files:
  - split: train
    path: dialog/train.jsonl
  - split: validation
    path: dialog/validation.jsonl
---
# Chat mix

Question/answer pairs (`qa`, Parquet) and dialogues (`dialog`, JSON Lines).
"""


def parquet(rows: list[dict[str, Any]]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf, row_group_size=8)
    return buf.getvalue()


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def qa(tag: str, split: str, n: int) -> list[dict[str, str]]:
    return [{"question": f"{tag} {split} question {i}?", "answer": f"{tag} answer {i}."} for i in range(n)]


def dialogs(tag: str, split: str, n: int) -> list[dict[str, Any]]:
    return [{"messages": [{"role": "user", "content": f"{tag} {split} dialogue {i}"},
                          {"role": "assistant", "content": f"{tag} reply {i}"}]} for i in range(n)]


def repo_files(tag: str, sizes: dict[str, int]) -> dict[str, bytes]:
    return {
        "README.md": README,
        ".gitattributes": b"*.parquet filter=lfs diff=lfs merge=lfs -text\n",
        "qa/train-00000-of-00001.parquet": parquet(qa(tag, "train", sizes["qa/train"])),
        "qa/test-00000-of-00001.parquet": parquet(qa(tag, "test", sizes["qa/test"])),
        "dialog/train.jsonl": jsonl(dialogs(tag, "train", sizes["dialog/train"])),
        "dialog/validation.jsonl": jsonl(dialogs(tag, "validation", sizes["dialog/validation"])),
    }


MAIN_SIZES = {"qa/train": 24, "qa/test": 6, "dialog/train": 10, "dialog/validation": 4}
LEGACY_SIZES = {"qa/train": 15, "qa/test": 3, "dialog/train": 7, "dialog/validation": 2}


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    fake = FakeHub(token=HUB_TOKEN)
    fake.add_dataset(REPO, {"main": repo_files("Main", MAIN_SIZES), "legacy": repo_files("Legacy", LEGACY_SIZES)},
                     tags={"v1.0": "legacy"})
    fake.add_dataset(GATED, {"main": {"README.md": b"---\nlicense: mit\n---\n# Gated\n",
                                      "data/train.jsonl": jsonl(dialogs("Gated", "train", 5))}}, gated=True)
    pad = b"x" * 200
    fake.add_dataset(BIG, {"main": {"README.md": b"# Big\n", "data/train.jsonl": b"".join(
        b'{"question": "Big question %d %s?", "answer": "Big answer %d."}\n' % (i, pad, i)
        for i in range(BIG_ROWS))}})
    with fake:
        yield fake


@pytest.fixture(scope="module")
def hub_worker(stack: Stack, hub: FakeHub, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Callable[..., Path]]:
    """`start(token=None)`: replace the running workers by one whose environment points the Hugging Face
    libraries at the fake Hub (they read HF_ENDPOINT once, at import: the worker gets it before it starts) with
    no offline switch, its own HF_HOME and HF_TOKEN = `token`; returns that HF_HOME. The session's worker is
    restored after the module."""
    logs = tmp_path_factory.mktemp("hub-worker")
    own = Stack(env={}, base_url=stack.base_url, logs=logs)
    stack.stop_workers()

    def start(token: str | None = None) -> Path:
        own.stop_workers()
        hf_home = Path(tmp_path_factory.mktemp("hf-home"))
        env = {k: v for k, v in stack.env.items() if k not in HF_ENV_DROPPED}
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY="1")
        if token is not None:
            env["HF_TOKEN"] = token
        own.env = env
        own.start_worker(concurrency=1, queues="dataset")
        return hf_home

    try:
        yield start
    finally:
        own.stop_workers()
        stack.start_worker()


@pytest.fixture(scope="module")
def hf_home(hub_worker: Callable[..., Path]) -> Path:
    return hub_worker()


def run_dataset(client: httpx.Client, source: dict[str, Any], timeout: float = 90,
                **spec: Any) -> dict[str, Any]:
    r = client.post("/v1/jobs", json={"kind": "dataset", "spec": {"source": {"type": "hub", **source},
                                                                  "shuffle": False, **spec}})
    assert r.status_code == 201, r.text
    job = client.get(f"/v1/jobs/{r.json()['id']}/wait", params={"timeout": timeout}).json()
    assert job["status"] in ("succeeded", "failed"), job
    return job


def output_rows(client: httpx.Client, job: dict[str, Any]) -> list[dict[str, Any]]:
    """Every row the job wrote, over all its splits."""
    assert job["status"] == "succeeded", job["error"]
    rows = []
    for split in job["result"]["splits"].values():
        r = client.get(f"/v1/artifacts/{split['artifact_id']}/content")
        assert r.status_code == 200, r.text
        rows += [orjson.loads(line) for line in r.content.splitlines()]
    return rows


def user_turns(client: httpx.Client, job: dict[str, Any]) -> list[str]:
    return sorted(m["content"] for row in output_rows(client, job) for m in row["messages"] if m["role"] == "user")


def expected_users(tag: str, split: str, n: int, kind: str) -> list[str]:
    return sorted(f"{tag} {split} question {i}?" if kind == "qa" else f"{tag} {split} dialogue {i}"
                  for i in range(n))


def test_default_config_is_streamed_from_the_hub(hub: FakeHub, hf_home: Path, client: httpx.Client) -> None:
    hub.reset_log()
    job = run_dataset(client, {"name": REPO})
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["shape"] == "question_answer" and job["result"]["rows_out"] == 24
    assert user_turns(client, job) == expected_users("Main", "train", 24, "qa")
    assert any(m["role"] == "assistant" and m["content"] == "Main answer 3."
               for row in output_rows(client, job) for m in row["messages"])

    # Streamed: the split's file was read by HTTP range requests; no other data file of the repo was read ...
    reads = hub.file_reads(REPO, ".parquet") + hub.file_reads(REPO, ".jsonl")
    assert {r.path.split("/resolve/", 1)[1].split("/", 1)[1] for r in reads} == {"qa/train-00000-of-00001.parquet"}
    assert all(r.range is not None and r.status == 206 for r in reads), reads
    # ... and nothing but the dataset card was stored in the worker's Hugging Face cache.
    data = {hashlib.sha256(b).hexdigest() for p, b in repo_files("Main", MAIN_SIZES).items() if p != "README.md"}
    cached = {hashlib.sha256(f.read_bytes()).hexdigest() for f in hf_home.rglob("*") if f.is_file()}
    assert not data & cached
    assert hub.unknown == [], hub.unknown  # the fake answered every request the libraries made


def test_max_examples_stops_reading_a_big_hub_file(hub: FakeHub, hf_home: Path, client: httpx.Client) -> None:
    size = len(hub.file(BIG, "main", "data/train.jsonl", auth=None)[1])
    hub.reset_log()
    job = run_dataset(client, {"name": BIG}, max_examples=100)
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["rows_out"] == 100 and job["result"]["rows_in"] < 5000
    reads = hub.file_reads(BIG, ".jsonl")
    assert reads and all(r.status == 206 for r in reads), reads
    # Only the first part of the file left the server: its tail was never requested.
    assert sum(r.sent for r in reads) < size
    assert max(int(r.range.rsplit("-", 1)[1]) for r in reads if r.range) < size - 1, reads


def test_each_config_and_split(hf_home: Path, client: httpx.Client) -> None:
    cases = [({"config": "dialog"}, "messages", expected_users("Main", "train", 10, "dialog")),
             ({"config": "dialog", "split": "validation"}, "messages", expected_users("Main", "validation", 4,
                                                                                       "dialog")),
             ({"config": "qa", "split": "test"}, "question_answer", expected_users("Main", "test", 6, "qa"))]
    for source, shape, users in cases:
        job = run_dataset(client, {"name": REPO, **source})
        assert job["status"] == "succeeded", (source, job["error"])
        assert job["result"]["shape"] == shape, source
        assert user_turns(client, job) == users, source


def test_revision_reads_the_older_rows(hub: FakeHub, hf_home: Path, client: httpx.Client) -> None:
    tagged = run_dataset(client, {"name": REPO, "revision": "v1.0"})
    assert user_turns(client, tagged) == expected_users("Legacy", "train", 15, "qa")
    by_commit = run_dataset(client, {"name": REPO, "revision": hub.sha(REPO, "legacy"), "config": "dialog",
                                     "split": "validation"})
    assert user_turns(client, by_commit) == expected_users("Legacy", "validation", 2, "dialog")
    main = run_dataset(client, {"name": REPO, "revision": "main", "config": "dialog"})
    assert user_turns(client, main) == expected_users("Main", "train", 10, "dialog")


def test_unknown_config_split_revision_or_name_fail_saying_what_exists(hf_home: Path,
                                                                      client: httpx.Client) -> None:
    cases = [({"name": REPO, "config": "chat"}, "bad_config", ["'chat'", "`config`", "qa", "dialog"]),
             ({"name": REPO, "config": "dialog", "split": "test"}, "bad_split",
              ["'test'", "`split`", "train, validation"]),
             ({"name": REPO, "split": "dev"}, "bad_split", ["'dev'", "train, test"]),
             ({"name": REPO, "revision": "v9"}, "bad_revision", ["'v9'", "`revision`", "legacy, main", "v1.0"]),
             ({"name": "tuneq-test/no-such-set"}, "dataset_not_found", ["`name`", "HF_TOKEN"])]
    for source, code, words in cases:
        job = run_dataset(client, source)
        assert job["status"] == "failed", source
        error = job["error"]
        assert error["code"] == code, (source, error)
        assert f"'{source['name']}'" in error["message"], error
        for word in words:
            assert word in error["message"], (word, error["message"])
        assert "Traceback" not in error["message"] and "127.0.0.1" not in error["message"], error


def test_gated_dataset_needs_the_servers_token(hub: FakeHub, hub_worker: Callable[..., Path], hf_home: Path,
                                              stack: Stack, client: httpx.Client) -> None:
    job = run_dataset(client, {"name": GATED})
    assert job["status"] == "failed"
    error = job["error"]
    assert error["code"] == "dataset_gated", error
    assert f"'{GATED}'" in error["message"] and "gated" in error["message"] and "HF_TOKEN" in error["message"]

    hub.reset_log()
    try:
        hub_worker(token=OTHER_TOKEN)  # the Hub answers 403: this account has not been granted access
        denied = run_dataset(client, {"name": GATED})
        assert denied["status"] == "failed" and denied["error"]["code"] == "dataset_gated", denied
        assert "HF_TOKEN has no access" in denied["error"]["message"], denied["error"]
        hub_worker(token=HUB_TOKEN)
        ok = run_dataset(client, {"name": GATED})
        assert user_turns(client, ok) == expected_users("Gated", "train", 5, "dialog")
        reads = hub.file_reads(GATED, ".jsonl")
        assert reads and all(r.authorized and r.status == 206 for r in reads), reads
        # The token is the server's setting: it is in no job row, event or error.
        for seen in (ok, denied, job):
            text = orjson.dumps(seen).decode() + client.get(f"/v1/jobs/{seen['id']}/events",
                                                            params={"limit": 1000}).text
            assert HUB_TOKEN not in text and OTHER_TOKEN not in text
    finally:
        hub_worker()  # the other tests expect a worker without a token
    # Nor in any file the stack wrote: logs, the database, the broker's files, the Hugging Face caches.
    found = subprocess.run(["grep", "-rlF", "-e", HUB_TOKEN, "-e", OTHER_TOKEN, str(stack.logs.parent)],
                           capture_output=True, text=True)
    assert found.returncode == 1 and found.stdout == "", (found.returncode, found.stdout, found.stderr)
