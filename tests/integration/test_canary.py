"""Secrets never leak: with a unique canary value in every secret (Tinker, OpenRouter, Hugging Face and the tuneq
API key itself), every job kind runs to success and to failure, and then no canary appears anywhere a secret
could end up: API response bodies and headers, every row of every table, every Redis key and value, every log
line the API and the worker wrote, and every file under the var dir (docs/architecture.md, "Database blips":
error messages never carry exception text).

The test runs its own stack on its own database and Redis (tests/isolated.py), so no other test's reaper or
worker touches its jobs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis
from sqlalchemy import inspect, select, text
from sqlalchemy.engine import Engine

from tests.fakes.openrouter_server import FakeOpenRouter
from tests.isolated import isolated_stack

TIMEOUT = 90


def _canary(label: str) -> str:
    return f"canary{label}{uuid.uuid4().hex}"


class Recorder:
    """Every response the test saw: status, headers and body, as text to search."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, response: httpx.Response) -> None:
        response.read()
        headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
        self.seen.append(f"{response.request.method} {response.request.url} {response.status_code}\n{headers}\n"
                         f"{response.content.decode(errors='replace')}")


def _wait(client: httpx.Client, job_id: str) -> dict[str, Any]:
    for _ in range(TIMEOUT // 15):
        job = client.get(f"/v1/jobs/{job_id}/wait", params={"timeout": 15}).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
    raise AssertionError(f"job {job_id} did not end")


def _run(client: httpx.Client, body: dict[str, Any], expect: str) -> dict[str, Any]:
    r = client.post("/v1/jobs", json={"max_attempts": 1, **body})
    assert r.status_code == 201, r.text
    job = _wait(client, r.json()["id"])
    assert job["status"] == expect, (body, job)
    print(f"canary: {body['kind']} {job['status']}: {job.get('error')}")
    # Read everything the API shows about it, so those bodies are searched too.
    for route in ("events?limit=1000", "items", "metrics", "checkpoints"):
        client.get(f"/v1/jobs/{job['id']}/{route}")
    for artifact in (job.get("result") or {}).values():
        if isinstance(artifact, str) and artifact.startswith("art_"):
            client.get(f"/v1/artifacts/{artifact}")
            client.get(f"/v1/artifacts/{artifact}/content")
    return job


def _table_dump(engine: Engine) -> str:
    out = []
    with engine.connect() as conn:
        for table in inspect(engine).get_table_names():
            for row in conn.execute(select(text("*")).select_from(text(f'"{table}"'))):
                out.append(f"{table}: {tuple(row)!r}")
    return "\n".join(out)


def _redis_dump(url: str) -> str:
    r = redis.Redis.from_url(url)
    out = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key).decode()
        value: Any = {"string": r.get, "list": lambda k: r.lrange(k, 0, -1), "hash": r.hgetall,
                      "set": r.smembers, "zset": lambda k: r.zrange(k, 0, -1, withscores=True)}.get(
            kind, lambda k: None)(key)
        out.append(f"{key!r} {kind} {value!r}")
    return "\n".join(out)


def _files(*roots: Path) -> Iterator[tuple[Path, bytes]]:
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                yield path, path.read_bytes()


def test_no_secret_leaks_anywhere(backend: dict[str, str], tmp_path: Path) -> None:
    from app.db import make_engine

    secrets = {"TINKER_API_KEY": _canary("tinker"), "OPENROUTER_API_KEY": _canary("openrouter"),
               "HF_TOKEN": "hf_" + _canary("hf")}
    # The first training job fails on create_model, the first evaluation on its first sample.
    faults = {"faults": [{"op": "create_model", "kind": "user_error", "at": [1]},
                         {"op": "sample", "kind": "user_error", "at": [1]}]}
    recorder = Recorder()
    with FakeOpenRouter(api_key=secrets["OPENROUTER_API_KEY"]) as fake_openrouter, isolated_stack(
        tmp_path, "canary", {**secrets, "TUNEQ_OPENROUTER_BASE_URL": fake_openrouter.url}, tinker=faults,
    ) as own:
        plain = own.create_key(rate_limit="100000/second")
        secrets["TUNEQ_API_KEY"] = plain
        secrets["TUNEQ_API_KEY secret part"] = plain.split("_", 2)[2]
        own.stack.start_worker(concurrency=2)
        with httpx.Client(base_url=own.stack.base_url, headers={"Authorization": f"Bearer {plain}"}, timeout=30,
                          event_hooks={"response": [recorder]}) as client:
            _exercise(client, own.var, fake_openrouter, secrets)
            # A wrong key, and keys in the wrong places: the answer never echoes them.
            for headers in ({"Authorization": f"Bearer {plain}x"}, {"Authorization": plain},
                            {"Authorization": f"Bearer {secrets['OPENROUTER_API_KEY']}"}):
                client.get("/v1/jobs", headers=headers)
            client.post("/v1/jobs", json={"kind": "test", "spec": {"fail_with": 1}, "labels": {"k": plain}})
        own.stack.stop()  # every log line written
        engine = make_engine(own.database_url)
        try:
            haystacks: dict[str, bytes] = {
                "API responses": "\n\n".join(recorder.seen).encode(),
                "tables": _table_dump(engine).encode(),
                "redis": _redis_dump(own.broker_url).encode(),
            }
        finally:
            engine.dispose()
        for path, content in _files(own.var, own.logs, own.tinker_state):
            haystacks[str(path)] = content
    assert len(recorder.seen) > 40 and any("worker-" in where for where in haystacks)
    leaks = [f"{name} in {where}" for where, content in haystacks.items()
             for name, value in secrets.items() if value.encode() in content]
    assert leaks == [], "\n".join(leaks)


def _exercise(client: httpx.Client, var: Path, fake_openrouter: FakeOpenRouter, secrets: dict[str, str]) -> None:
    """Every job kind to failure and to success."""
    _run(client, {"kind": "test", "spec": {"steps": 2}}, "succeeded")
    _run(client, {"kind": "test", "spec": {"fail_with": "planned failure"}}, "failed")

    rows = [{"messages": [{"role": "user", "content": f"What is {i} times 3?"},
                          {"role": "assistant", "content": f"{i} times 3 is {3 * i}."}]} for i in range(24)]
    data = b"".join(orjson.dumps(r) + b"\n" for r in rows)
    (var / "datasets" / "org__local").mkdir()
    (var / "datasets" / "org__local" / "train.jsonl").write_bytes(data)
    upload = client.post("/v1/files", params={"name": "rows.jsonl"}, content=data).json()
    client.get(f"/v1/artifacts/{upload['id']}/preview")
    dataset = _run(client, {"kind": "dataset", "spec": {"source": {"type": "artifact", "artifact_id": upload["id"]},
                                                        "validation_rows": 4}}, "succeeded")
    _run(client, {"kind": "dataset", "spec": {"source": {"type": "local", "path": "org__local"}}}, "succeeded")
    # Offline, the hub is unreachable: the job fails (with HF_TOKEN set, which it must not reveal).
    _run(client, {"kind": "dataset", "spec": {"source": {"type": "hub", "name": "org/private-set"}}}, "failed")
    train, validation = dataset["result"]["train_artifact"], dataset["result"]["validation_artifact"]
    client.post(f"/v1/artifacts/{train}/render", params={"row": 0})

    generation = {"kind": "generation", "spec": {"prompt": "Teach {{ topic }}.", "topics": ["sums", "primes"]}}
    fake_openrouter.configure(api_key="another-key")  # the provider refuses our key: 401
    _run(client, generation, "failed")
    fake_openrouter.configure(api_key=secrets["OPENROUTER_API_KEY"])
    _run(client, generation, "succeeded")
    assert fake_openrouter.outcomes["ok"] > 0 and fake_openrouter.outcomes["401"] > 0, fake_openrouter.outcomes

    training = {"kind": "training", "spec": {"train_artifact": train, "validation_artifact": validation,
                                             "batch_size": 4, "epochs": 1, "save_every": 2, "eval_every": 0}}
    _run(client, training, "failed")  # the fake Tinker's create_model fault
    trained = _run(client, training, "succeeded")

    evaluation = {"kind": "evaluation", "spec": {"eval_artifact": validation, "training_job": trained["id"],
                                                 "samples": 1, "max_examples": 4}}
    _run(client, evaluation, "failed")  # the fake Tinker's sample fault
    _run(client, evaluation, "succeeded")
