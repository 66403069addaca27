"""Training runs that outlive their interruptions: a Tinker call that never answers (stall, cancel), a worker's
SIGTERM (checkpoint and hand-back), `resume` of a failed run (same step count, same LR schedule), and a plan
that changed between a checkpoint and its resume. Real workers, the real SDK, the fake Tinker service."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_training_jobs import fake_lineage, make_dataset, submit, wait
from tests.support import Stack, process_group, wait_until

StartWorker = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def workers(stack: Stack, tmp_path: Path) -> Iterator[StartWorker]:
    """Stop the shared worker; `start(faults=[...], latency={...})` starts a worker whose fake Tinker injects
    those faults (checkpoints in the shared state_dir). The shared worker is back after the test."""
    stack.stop_workers()
    own = Stack(env=dict(stack.env), base_url=stack.base_url, logs=tmp_path)
    base = json.loads(stack.env["TUNEQ_TINKER_FAKE_CONFIG"])

    def start(faults: list[dict[str, Any]] | None = None, latency: dict[str, float] | None = None,
              concurrency: int = 1) -> subprocess.Popen[bytes]:
        config = {**base, "faults": faults or [], "latency": {**base.get("latency", {}), **(latency or {})}}
        own.env["TUNEQ_TINKER_FAKE_CONFIG"] = json.dumps(config)
        return own.start_worker(concurrency=concurrency)

    try:
        yield start
    finally:
        own.stop_workers()
        stack.start_worker()


def events(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    return client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]


def series(client: httpx.Client, job_id: str, name: str) -> list[list[float]]:
    return client.get(f"/v1/jobs/{job_id}/metrics", params={"names": name}).json()["series"].get(name, [])


def checkpoints(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    return [c for c in client.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"] if c["kind"] == "state"]


def done_steps(client: httpx.Client, job_id: str) -> int:
    job = client.get(f"/v1/jobs/{job_id}").json()
    return int((job["progress"] or {}).get("done", 0)) if job["status"] == "running" else 0


def resume(client: httpx.Client, job: dict[str, Any]) -> None:
    r = client.post(f"/v1/jobs/{job['id']}/resume")
    # Queued again; a fast worker may have taken it (and even ended it) before the answer was read back.
    assert r.status_code == 200, r.text
    assert r.json()["status"] in ("queued", "running") or r.json()["started_at"] != job["started_at"], r.text


def test_a_call_that_never_answers_is_preempted_as_stalled_and_the_run_resumes(
        stack: Stack, workers: StartWorker, client: httpx.Client) -> None:
    workers(faults=[{"op": "forward_backward", "kind": "hang", "at": [5]}])
    dataset = make_dataset(client, rows=40, validation_rows=0)
    job = wait(client, submit(client, dataset, epochs=1, save_every=3, stall_seconds=5)["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["attempt"] == 1 and job["preemptions"] == 1  # the infrastructure's, not the job's

    log = events(client, job["id"])
    [stalled] = [e["data"] for e in log if e["type"] == "preempted"]
    assert stalled["reason"] == "stalled" and stalled["waiting_on"] == "forward_backward step 5"
    assert stalled["stall_limit_seconds"] == 5
    assert [e["data"]["from_step"] for e in log if e["type"] == "resumed"] == [3]  # its last checkpoint
    assert [s for s, _ in series(client, job["id"], "loss")] == list(range(1, 11))
    lineage = fake_lineage_of(stack, job)
    assert len(lineage) == 10 and len(set(lineage)) == 10  # no batch twice


def test_an_honest_long_validation_is_not_taken_for_a_stall(workers: StartWorker, client: httpx.Client) -> None:
    workers(latency={"forward": 0.8})  # 8 validation batches: longer in all than the stall limit, each far shorter
    dataset = make_dataset(client, rows=72, validation_rows=32)
    job = wait(client, submit(client, dataset, validation_artifact=dataset["validation_artifact"], epochs=1,
                              eval_every=0, stall_seconds=5)["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["preemptions"] == 0 and job["result"]["final_val_loss"] is not None


def test_cancel_interrupts_a_call_that_never_answers(workers: StartWorker, client: httpx.Client) -> None:
    workers(faults=[{"op": "forward_backward", "kind": "hang", "at": [3]}])
    dataset = make_dataset(client, rows=40, validation_rows=0)
    job = submit(client, dataset, epochs=1, save_every=2, stall_seconds=600)
    wait_until(lambda: done_steps(client, job["id"]) >= 2, 60, "two steps, then the call that never answers")
    client.post(f"/v1/jobs/{job['id']}/cancel")
    # Bounded far below the stall limit (600 s): the wait itself stops for the cancel.
    done = wait(client, job["id"], timeout=30)
    assert done["status"] == "cancelled"
    types = [e["type"] for e in events(client, job["id"])]
    assert "preempted" not in types and types[-1] == "cancelled"
    # Step 3 never ended, so nothing was saved after step 2's periodic checkpoint.
    assert [(c["step"], c["data"]["reason"]) for c in checkpoints(client, job["id"])] == [(2, "periodic")]


@pytest.mark.parametrize("whom", ["main", "group"])
def test_sigterm_checkpoints_hands_back_and_another_worker_resumes(
        stack: Stack, workers: StartWorker, client: httpx.Client, whom: str) -> None:
    """`main`: SIGTERM to the worker's main process only, as `docker stop` and Kubernetes send it (to PID 1);
    `group`: to its whole process group, pool processes included, as systemd does and Stack.kill_worker."""
    slow = {"forward_backward": 0.1}
    pair = [workers(latency=slow), workers(latency=slow)]
    dataset = make_dataset(client, rows=80, validation_rows=0)
    reference = wait(client, submit(client, dataset, epochs=3, save_every=5)["id"])
    assert reference["status"] == "succeeded", reference["error"]
    expected = fake_lineage_of(stack, reference)

    job = submit(client, dataset, epochs=3, save_every=5)
    wait_until(lambda: done_steps(client, job["id"]) >= 7, 60, "the job mid-run")
    owner = int([e for e in events(client, job["id"]) if e["type"] == "running"][-1]["data"]["owner"]
                .rsplit(":", 1)[1])
    [first] = [w for w in pair if owner in process_group(w.pid)]
    seen = done_steps(client, job["id"])
    if whom == "group":
        stack.kill_worker(first, signal.SIGTERM)
    else:
        first.send_signal(signal.SIGTERM)
    done = wait(client, job["id"])
    first.wait(timeout=60)  # that worker did shut down

    assert done["status"] == "succeeded", done["error"]
    assert done["attempt"] == 1 and done["preemptions"] >= 1
    log = events(client, job["id"])
    handed = [e for e in log if e["type"] == "preempted"]
    assert handed and handed[0]["data"]["reason"] == "shutdown", handed
    [saved] = [c for c in checkpoints(client, job["id"]) if c["data"]["reason"] == "shutdown"]
    assert saved["step"] >= seen  # the step it stopped at, not an older periodic one
    [resumed] = [e["data"] for e in log if e["type"] == "resumed"]
    assert resumed["from_step"] == saved["step"]  # nothing redone
    assert saved["data"]["plan"] == done["result"]["plan"]
    assert [s for s, _ in series(client, job["id"], "loss")] == list(range(1, 61))
    assert fake_lineage_of(stack, done) == expected  # each batch once, in order


def fake_lineage_of(stack: Stack, job: dict[str, Any]) -> list[str]:
    return fake_lineage(stack, job["result"]["state_path"])


def test_resume_of_a_failed_run_continues_its_steps_and_lr_schedule(
        stack: Stack, workers: StartWorker, client: httpx.Client) -> None:
    workers(faults=[{"op": "forward_backward", "kind": "user_error", "at": [8], "times": 1}])
    dataset = make_dataset(client, rows=40, validation_rows=0)
    spec = {"epochs": 2, "save_every": 3, "lr_schedule": "cosine", "warmup_steps": 4}
    job = wait(client, submit(client, dataset, **spec)["id"])
    assert job["status"] == "failed" and job["error"]["code"] == "tinker_rejected", job
    assert "forward_backward step 8" in job["error"]["message"]
    assert [c["step"] for c in checkpoints(client, job["id"])] == [3, 6]

    resume(client, job)
    done = wait(client, job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["attempt"] == 1
    reference = wait(client, submit(client, dataset, **spec)["id"])  # the same run, uninterrupted
    assert reference["status"] == "succeeded", reference["error"]

    lrs, expected_lrs = series(client, job["id"], "lr"), series(client, reference["id"], "lr")
    assert [s for s, _ in lrs] == list(range(1, 21))  # no gap, no step twice
    assert lrs == expected_lrs  # the same place in the warmup and cosine schedule at every step
    losses, expected_losses = series(client, job["id"], "loss"), series(client, reference["id"], "loss")
    assert [round(v, 9) for _, v in losses] == [round(v, 9) for _, v in expected_losses]
    assert fake_lineage_of(stack, done) == fake_lineage_of(stack, reference)
    resumed = [e["data"] for e in events(client, job["id"]) if e["type"] == "resumed"]
    assert resumed[-1]["from_step"] == 6


def test_a_changed_plan_refuses_to_resume(client: httpx.Client) -> None:
    from sqlalchemy import select, update

    from app.db import session_scope
    from app.models import Checkpoint

    dataset = make_dataset(client, rows=80, validation_rows=0)
    job = submit(client, dataset, epochs=20, save_every=1000)
    wait_until(lambda: done_steps(client, job["id"]) >= 3, 60, "a few steps")
    client.post(f"/v1/jobs/{job['id']}/cancel")
    cancelled = wait(client, job["id"])
    assert cancelled["status"] == "cancelled"
    [saved] = checkpoints(client, job["id"])
    assert saved["data"]["plan"]["renderer_version"] >= 1 and saved["data"]["plan"]["examples"] == 80
    steps_before = series(client, job["id"], "loss")

    # As if it had been trained by a deploy whose renderer differed.
    with session_scope() as session:
        data = session.scalar(select(Checkpoint.data).where(Checkpoint.id == saved["id"]))
        plan = {**data["plan"], "renderer_version": data["plan"]["renderer_version"] - 1}
        session.execute(update(Checkpoint).where(Checkpoint.id == saved["id"]).values(data={**data, "plan": plan}))

    resume(client, cancelled)
    failed = wait(client, job["id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "plan_changed", failed
    message = failed["error"]["message"]
    assert "renderer_version" in message and f'from_checkpoint="{saved["id"]}"' in message
    assert set(failed["error"]["details"]["changed"]) == {"renderer_version"}
    assert series(client, job["id"], "loss") == steps_before  # nothing trained, nothing forgotten
