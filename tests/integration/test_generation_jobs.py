"""Generation jobs end to end against a real loopback OpenRouter stand-in and a real worker."""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson
import pytest

from app.chat import validate_conversation
from tests.conftest import OPENROUTER_TEST_KEY
from tests.fakes.openrouter_server import FakeOpenRouter
from tests.support import Stack, wait_until


def submit(client: httpx.Client, **spec: Any) -> dict[str, Any]:
    body = {"kind": "generation", "spec": {"model": "moonshotai/kimi-k2", "prompt": "Teach {{ topic }}.", **spec}}
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def wait(client: httpx.Client, job_id: str, timeout: float = 90) -> dict[str, Any]:
    return client.get(f"/v1/jobs/{job_id}/wait", params={"timeout": timeout}).json()


def items(client: httpx.Client, job_id: str, status: str | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = -1
    while True:
        params: dict[str, Any] = {"after": after, "limit": 200, **({"status": status} if status else {})}
        page = client.get(f"/v1/jobs/{job_id}/items", params=params).json()
        out += page["data"]
        if not page["has_more"]:
            return out
        after = page["next_cursor"]


def calls_for(fake: FakeOpenRouter, job_id: str) -> dict[int, int]:
    return {int(k.split(":")[1]): v for k, v in fake.calls.items() if k.startswith(job_id + ":")}


def test_faulty_provider_every_item_ends_ok_or_failed_with_a_reason(fake: FakeOpenRouter, client: httpx.Client) -> None:
    fake.configure(fail_rates={"429": 0.10, "500": 0.05, "error_body": 0.05}, retry_after=0.05, seed=3)
    topics = [f"topic {i}" for i in range(200)]
    job = wait(client, submit(client, topics=topics, output="completion", concurrency=16, max_attempts_per_item=3)["id"])
    assert job["status"] == "succeeded", job["error"]
    all_items = items(client, job["id"])
    assert len(all_items) == 200 and {i["status"] for i in all_items} <= {"ok", "failed"}
    for item in all_items:
        if item["status"] == "failed":
            assert item["error"]["code"] and item["error"]["message"]
    calls = calls_for(fake, job["id"])
    assert all(calls[i["index"]] == i["attempts"] for i in all_items)  # calls per item = 1 + its retries
    assert all(1 <= i["attempts"] <= 3 for i in all_items)
    result = job["result"]
    assert result["ok"] + result["failed"] == 200 and result["calls"] == sum(calls.values())
    assert result["retries"] == result["calls"] - 200 > 0
    rows = [orjson.loads(line) for line in client.get(f"/v1/artifacts/{result['artifact']}/content").content.splitlines()]
    assert len(rows) == result["rows"] == result["ok"] - result["duplicates_dropped"]
    assert all(validate_conversation(r["messages"]) is None for r in rows)
    failed = items(client, job["id"], status="failed")
    assert [i["index"] for i in failed] == [i["index"] for i in all_items if i["status"] == "failed"]


def test_scaffolding_preset_makes_valid_dialogues(fake: FakeOpenRouter, client: httpx.Client) -> None:
    body = {"kind": "generation", "spec": {"preset": "scaffolding", "topics": ["fractions", "recursion"],
                                           "per_topic": 2}}
    job = wait(client, client.post("/v1/jobs", json=body).json()["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["ok"] == 4
    sent = [r for r in fake.requests if r.get("headers", {}).get("x-tuneq-item", "").startswith(job["id"])]
    assert sent and "scaffold" in orjson.dumps(sent[0]).decode().lower()


def test_killed_worker_resumes_without_recalling_finished_items(stack: Stack, fake: FakeOpenRouter,
                                                                 client: httpx.Client) -> None:
    fake.configure(latency=0.1)
    stack.stop_workers()
    try:
        first = stack.start_worker(concurrency=1)
        job = submit(client, count=120, prompt="Item {{ index }}", output="completion", concurrency=4)
        wait_until(lambda: len(items(client, job["id"], "ok")) >= 30, 60, "some items to finish")
        stack.kill_worker(first)
        done_before = {i["index"] for i in items(client, job["id"], "ok")}
        calls_before = dict(calls_for(fake, job["id"]))
        stack.start_worker(concurrency=1)
        finished = wait(client, job["id"])
    finally:
        stack.stop_workers()
        stack.start_worker()
    assert finished["status"] == "succeeded" and finished["attempt"] == 1 and finished["preemptions"] == 1, finished
    calls = calls_for(fake, job["id"])
    assert all(calls[i] == calls_before[i] for i in done_before)  # no provider call for finished items
    assert len(calls) == 120
    assert sum(calls.values()) - 120 <= 4  # at most the calls in flight at the kill (no faults configured)


def test_budget_stops_within_one_concurrency_window(fake: FakeOpenRouter, client: httpx.Client) -> None:
    fake.configure(cost_per_call=0.01, latency=0.02)
    job = wait(client, submit(client, count=300, prompt="Item {{ index }}", output="completion", concurrency=4,
                              max_cost_usd=0.5)["id"])
    assert job["status"] == "succeeded", job["error"]
    result = job["result"]
    assert 0.5 <= result["cost_usd"] <= 0.5 + 4 * 0.01 + 1e-9
    assert "max_cost_usd reached" in result["stop_reason"] and result["pending"] > 0
    types = [e["type"] for e in client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]]
    assert "budget_reached" in types


@pytest.mark.parametrize(("status", "code", "advice"), [
    (401, "invalid_api_key", "The server's OpenRouter key was refused (401): ask an operator to check "
                             "OPENROUTER_API_KEY"),
    (402, "insufficient_credits", "ask an operator to add credits"),
    (403, "key_forbidden", "ask an operator to check the key's permissions"),
])
def test_the_servers_key_refused_fails_fast_for_an_operator_and_never_leaks_the_key(
    stack: Stack, fake: FakeOpenRouter, client: httpx.Client, status: int, code: str, advice: str
) -> None:
    fake.configure(status_override=status, forbidden_moderation=False)
    job = wait(client, submit(client, count=50, prompt="Item {{ index }}", output="completion")["id"])
    assert job["status"] == "failed" and job["error"]["code"] == code and advice in job["error"]["message"]
    assert job["error"]["user_error"] is False  # the server's key: not the teammate's to fix
    assert sum(calls_for(fake, job["id"]).values()) <= 16  # stopped at once (the calls in flight), no retries
    events = client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 1000}).text
    bodies = [events, orjson.dumps(job).decode()] + [p.read_text(errors="replace") for p in stack.logs.iterdir()]
    assert all(OPENROUTER_TEST_KEY not in text for text in bodies)
    assert any(r.get("headers", {}).get("authorization") == f"Bearer {OPENROUTER_TEST_KEY}" for r in fake.requests)


def test_moderation_is_the_users_to_fix(fake: FakeOpenRouter, client: httpx.Client) -> None:
    fake.configure(status_override=403)
    job = wait(client, submit(client, count=5, prompt="Item {{ index }}", output="completion")["id"])
    assert job["status"] == "failed" and job["error"]["code"] == "forbidden", job
    assert job["error"]["user_error"] is True and "Change the prompt or the model" in job["error"]["message"]


def test_cancel_stops_new_calls_at_once(fake: FakeOpenRouter, client: httpx.Client) -> None:
    fake.configure(latency=0.2)
    job = submit(client, count=500, prompt="Item {{ index }}", output="completion", concurrency=4)
    wait_until(lambda: len(calls_for(fake, job["id"])) >= 8, 30, "calls to start")
    client.post(f"/v1/jobs/{job['id']}/cancel")
    done = wait(client, job["id"])
    assert done["status"] == "cancelled"
    made = sum(calls_for(fake, job["id"]).values())
    time.sleep(1)
    assert sum(calls_for(fake, job["id"]).values()) == made < 500


def test_submit_time_errors(client: httpx.Client) -> None:
    r = client.post("/v1/jobs", json={"kind": "generation", "spec": {"prompt": "Hi {{ topic ", "topics": ["a"]}})
    assert r.status_code == 422 and "spec.prompt" in r.json()["detail"] and "line 1" in r.json()["detail"]
    r = client.post("/v1/jobs", json={"kind": "generation", "spec": {"prompt": "Hi {{ nope }}", "topics": ["a"]}})
    assert r.status_code == 422 and "nope" in r.json()["detail"]
    r = client.post("/v1/jobs", json={"kind": "generation", "spec": {"prompt": "x", "topics": ["a"], "count": 3}})
    assert r.status_code == 422 and "exactly one of" in r.json()["detail"]
    r = client.post("/v1/jobs", json={"kind": "generation", "spec": {"prompt": "x", "source_artifact": "art_nope"}})
    assert r.status_code == 422 and "no artifact" in r.json()["detail"]
