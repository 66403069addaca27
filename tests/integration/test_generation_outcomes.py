"""How jobs end tells the truth: a generation job whose every item failed fails (saying how many and why), a
partial one succeeds and says how many failed, a provider or Tinker outage is not the user's fault nor "a bug"
and can be resumed, and a template that blows up on some item fails that item, not the worker."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.openrouter_server import FakeOpenRouter
from tests.integration.test_generation_jobs import items, submit, wait
from tests.integration.test_training_jobs import make_dataset
from tests.integration.test_training_jobs import submit as submit_training
from tests.support import Stack

StartWorker = Callable[..., subprocess.Popen[bytes]]

DIALOGUE = '{"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]}'


@pytest.fixture
def tinker_faults(stack: Stack, tmp_path: Path) -> Iterator[StartWorker]:
    """`start(faults)`: replace the shared worker by one whose fake Tinker injects `faults`; restored after."""
    stack.stop_workers()
    own = Stack(env=dict(stack.env), base_url=stack.base_url, logs=tmp_path)
    base = json.loads(stack.env["TUNEQ_TINKER_FAKE_CONFIG"])

    def start(faults: list[dict[str, Any]]) -> subprocess.Popen[bytes]:
        own.env["TUNEQ_TINKER_FAKE_CONFIG"] = json.dumps({**base, "faults": faults})
        return own.start_worker(concurrency=1)

    try:
        yield start
    finally:
        own.stop_workers()
        stack.start_worker()


def events(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    return client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]


def test_a_job_whose_every_item_failed_fails_with_the_count_and_the_reason(
        fake: FakeOpenRouter, client: httpx.Client) -> None:
    fake.configure(content=lambda messages, key, attempt: "Sure! Here is a dialogue.")
    job = wait(client, submit(client, count=6, output="dialogue", prompt="Item {{ index }}")["id"])
    assert job["status"] == "failed", job
    error = job["error"]
    assert error["code"] == "all_items_failed" and error["user_error"] is True
    assert "All 6 items failed" in error["message"] and "bad_output" in error["message"]
    assert "not JSON" in error["message"]  # an example of the reason, not only its code
    assert error["details"]["failed_by_reason"] == {"bad_output": 6}


def test_a_partly_failed_job_succeeds_and_says_how_many_failed(fake: FakeOpenRouter, client: httpx.Client) -> None:
    fake.configure(content=lambda messages, key, attempt: DIALOGUE if int(key.split(":")[1]) % 3 else "nope")
    job = wait(client, submit(client, count=9, output="dialogue", prompt="Item {{ index }}")["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["failed_items"] == 3 and job["result"]["ok"] == 6 and job["result"]["rows"] >= 1
    [warning] = [e["data"] for e in events(client, job["id"]) if e["type"] == "warning"]
    assert warning["code"] == "items_failed" and warning["failed_items"] == 3
    assert "3 of 9 items failed" in warning["message"]


def test_a_provider_outage_is_not_the_users_fault_and_resume_retries_it(
        fake: FakeOpenRouter, client: httpx.Client) -> None:
    fake.configure(status_override=503)
    job = wait(client, submit(client, count=4, output="completion", prompt="Item {{ index }}",
                              max_attempts_per_item=2)["id"])
    assert job["status"] == "failed", job
    error = job["error"]
    assert error["code"] == "provider_unavailable" and error["user_error"] is False
    assert f"POST /v1/jobs/{job['id']}/resume" in error["message"] and "outage" in error["message"]
    assert "bug" not in error["message"]

    fake.configure(status_override=None)
    assert client.post(f"/v1/jobs/{job['id']}/resume").status_code == 200
    done = wait(client, job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["ok"] == 4 and done["result"]["failed_items"] == 0


def test_an_item_whose_template_exceeds_the_bounds_fails_alone(fake: FakeOpenRouter, client: httpx.Client) -> None:
    # Item 0 (checked at submit) renders; items 1 and 2 would build a gigabyte string.
    prompt = "{% if index > 0 %}{{ 'x' * 1000000000 }}{% endif %}Item {{ index }}"
    job = wait(client, submit(client, count=3, output="completion", prompt=prompt)["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["failed_items"] == 2 and job["result"]["ok"] == 1
    failed = items(client, job["id"], "failed")
    assert [i["index"] for i in failed] == [1, 2]
    for item in failed:
        assert item["error"]["code"] == "template_error" and item["attempts"] == 0
        assert "exceeds the size limit" in item["error"]["message"]


def test_a_tinker_connection_failure_is_an_outage_with_a_way_to_resume(
        tinker_faults: StartWorker, client: httpx.Client) -> None:
    tinker_faults([{"op": "create_model", "kind": "connection", "surface": True, "probability": 1.0, "times": 1000}])
    dataset = make_dataset(client, rows=16, validation_rows=0)
    job = wait(client, submit_training(client, dataset, epochs=1, max_attempts=1)["id"])
    assert job["status"] == "failed", job
    error = job["error"]
    assert error["code"] == "tinker_unavailable" and error["user_error"] is False, error
    assert "could not be reached" in error["message"] and f"/v1/jobs/{job['id']}/resume" in error["message"]
    assert "bug on our side" not in error["message"]
