"""Auto-evaluation of training runs: every sampler checkpoint is scored on the validation set while training
continues, the result names the best one, and a resumed run scores only what its earlier attempt left unscored.
Real worker, the real SDK, the fake Tinker service (whose loss depends on the trained weights)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx
import pytest

from tests.integration.test_training_jobs import make_dataset, submit, wait
from tests.integration.test_training_resume import StartWorker, events, resume, workers  # noqa: F401 - fixture


def checkpoints(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    return client.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"]


def scored_steps(client: httpx.Client, job_id: str) -> list[int]:
    return [e["data"]["step"] for e in events(client, job_id) if e["type"] == "checkpoint_scored"]


def test_auto_eval_scores_every_sampler_checkpoint_and_names_the_best(client: httpx.Client) -> None:
    dataset = make_dataset(client)
    job = wait(client, submit(client, dataset, validation_artifact=dataset["validation_artifact"], auto_eval=True,
                              save_every=5, eval_every=5)["id"])
    assert job["status"] == "succeeded", job["error"]

    saved = checkpoints(client, job["id"])
    assert [c["step"] for c in saved] == [5, 10, 15, 20] and all(c["sampler_uri"] for c in saved)
    # The score is the validation loss of the checkpoint's own weights: what the training run measured at the
    # same step with its training client (the fake's loss depends on the weights, so each step differs).
    assert [c["eval_loss"] for c in saved] == pytest.approx([c["val_loss"] for c in saved], rel=1e-4)
    assert len({round(c["eval_loss"], 6) for c in saved}) == 4
    assert sorted(scored_steps(client, job["id"])) == [5, 10, 15, 20]  # one checkpoint_scored event each

    best = min(saved, key=lambda c: c["eval_loss"])
    assert job["result"]["best_checkpoint"] == {"id": best["id"], "step": best["step"],
                                                "eval_loss": pytest.approx(best["eval_loss"]),
                                                "sampler_path": best["sampler_uri"]}


def test_sampler_every_sets_which_steps_are_sampleable(client: httpx.Client) -> None:
    dataset = make_dataset(client, rows=24, validation_rows=0)
    every = wait(client, submit(client, dataset, epochs=1, save_every=2, sampler_every=3)["id"])  # 6 steps
    only_final = wait(client, submit(client, dataset, epochs=1, save_every=2, sampler_every=0)["id"])
    assert every["status"] == only_final["status"] == "succeeded"
    assert [(c["step"], c["sampler_uri"] is not None) for c in checkpoints(client, every["id"])] == [
        (2, False), (3, True), (4, False), (6, True)]  # a state at every save, sampler weights every 3 steps
    assert [(c["step"], c["sampler_uri"] is not None) for c in checkpoints(client, only_final["id"])] == [
        (2, False), (4, False), (6, True)]


def test_auto_eval_needs_a_validation_set(client: httpx.Client) -> None:
    r = client.post("/v1/jobs", json={"kind": "training", "spec": {"train_artifact": "art_x", "auto_eval": True}})
    assert r.status_code == 422, r.text
    assert "auto_eval" in r.json()["detail"] and "validation_artifact" in r.json()["detail"]


def test_a_resumed_run_scores_only_what_was_left_unscored(workers: StartWorker,  # noqa: F811 - fixture
                                                           client: httpx.Client) -> None:
    # Attempt 1: step 3's checkpoint is scored (8 validation conversations: sample calls 1-8); scoring step 6's
    # never answers (call 9); step 8 fails. The resumed run scores step 6's and every later one, not step 3's.
    workers(faults=[{"op": "sample", "kind": "hang", "at": [9]},
                    {"op": "forward_backward", "kind": "user_error", "at": [8]}],
            latency={"forward_backward": 0.2})
    dataset = make_dataset(client)
    spec = {"validation_artifact": dataset["validation_artifact"], "auto_eval": True, "eval_every": 0}
    job = wait(client, submit(client, dataset, **spec)["id"])
    assert job["status"] == "failed" and job["error"]["code"] == "tinker_rejected", job
    assert scored_steps(client, job["id"]) == [3]
    assert [(c["step"], c["eval_loss"] is not None) for c in checkpoints(client, job["id"])] == [(3, True), (6, False)]

    resume(client, job)
    done = wait(client, job["id"])
    assert done["status"] == "succeeded", done["error"]
    scored = scored_steps(client, job["id"])
    assert Counter(scored) == Counter([3, 6, 9, 12, 15, 18, 20])  # each once
    saved = checkpoints(client, job["id"])
    assert all(c["eval_loss"] is not None for c in saved)
    assert done["result"]["best_checkpoint"]["id"] == min(saved, key=lambda c: c["eval_loss"])["id"]
