"""The judge of evaluation jobs, end to end: a real worker, the fake Tinker, and judges on the loopback fake
OpenRouter (tests/fakes/judge.py); the samples route; prompt-only sets; per-example resume."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import make_client
from tests.fakes import judge as judges
from tests.fakes.openrouter_server import FakeOpenRouter
from tests.integration.test_evaluation_jobs import evaluate
from tests.integration.test_training_jobs import make_dataset, submit, wait
from tests.support import Stack, wait_until

JUDGE = "openai/gpt-4o-mini"


@pytest.fixture
def trained(client: httpx.Client) -> dict[str, Any]:
    """A dataset and a finished training run of the client's team: what the evaluations compare with the base."""
    dataset = make_dataset(client, rows=48, validation_rows=10)
    training = wait(client, submit(client, dataset, epochs=1)["id"])
    assert training["status"] == "succeeded", training["error"]
    return {"dataset": dataset, "training": training}


def judged(client: httpx.Client, trained: dict[str, Any], **spec: Any) -> dict[str, Any]:
    r = evaluate(client, eval_artifact=trained["dataset"]["validation_artifact"],
                 training_job=trained["training"]["id"], max_tokens=8, **spec)
    assert r.status_code == 201, r.text
    return r.json()


def samples(client: httpx.Client, job_id: str, **params: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = None
    while True:
        page = client.get(f"/v1/jobs/{job_id}/samples", params={**params, **({"after": after} if after else {})})
        assert page.status_code == 200, page.text
        out += page.json()["data"]
        if not page.json()["has_more"]:
            return out
        after = page.json()["next_cursor"]


def test_both_orders_cancel_a_judges_position_bias(fake: FakeOpenRouter, client: httpx.Client,
                                                    trained: dict[str, Any]) -> None:
    candidate = trained["training"]["id"]
    fake.configure(content=judges.prefers_first)
    biased = wait(client, judged(client, trained, samples=10, judge={"model": JUDGE})["id"])
    assert biased["status"] == "succeeded", biased["error"]
    verdict = next(m for m in biased["result"]["models"] if m["label"] == candidate)["judge"]
    assert verdict["n"] == 10 and abs(verdict["win_rate"] - 0.5) <= 0.05  # every example: one order each → tie
    assert verdict["ci95"][0] < 0.5 < verdict["ci95"][1]
    assert "judge" not in biased["result"]["models"][0]  # the base is the opponent, not judged itself

    fake.configure(content=judges.prefers_candidate)
    fair = wait(client, judged(client, trained, samples=10, judge={"model": JUDGE, "rubric": "Be terse."})["id"])
    assert fair["status"] == "succeeded", fair["error"]
    verdict = next(m for m in fair["result"]["models"] if m["label"] == candidate)["judge"]
    assert verdict["win_rate"] == 1.0 and verdict["win"] == verdict["n"] == 10 and verdict["ci95"][1] == 1.0
    sent = [r for r in fake.requests if r.get("headers", {}).get("x-tuneq-item", "").startswith(fair["id"])]
    assert len(sent) == 20 and all("Be terse." in orjson.dumps(r).decode() for r in sent)  # 10 pairs × 2 orders

    lines = [orjson.loads(line) for line in
             client.get(f"/v1/artifacts/{fair['result']['samples_artifact']}/content").content.splitlines()]
    assert len(lines) == 10 and all(line["verdicts"][candidate]["verdict"] == "win" for line in lines)


def test_samples_page_side_by_side_with_verdicts_and_filters(stack: Stack, fake: FakeOpenRouter,
                                                             client: httpx.Client, trained: dict[str, Any]) -> None:
    candidate = trained["training"]["id"]
    fake.configure(content=judges.mumbles)
    job = wait(client, judged(client, trained, samples=6, judge={"model": JUDGE})["id"])
    assert job["status"] == "succeeded", job["error"]  # unreadable answers are recorded failures, not a crash
    assert next(m for m in job["result"]["models"] if m["label"] == candidate)["judge"]["errors"] == 6

    every = samples(client, job["id"], limit=4)
    assert [(s["row"], s["model"]) for s in every] == sorted((row, m) for row in range(6) for m in ("base", candidate))
    mine = samples(client, job["id"], model=candidate)
    assert len(mine) == 6 and all(s["verdict"] == "error" and "names no winner" in s["reason"] for s in mine)
    base_replies = {s["row"]: s["reply"] for s in every if s["model"] == "base"}
    for s in mine:
        assert s["opponent"] == "base" and s["opponent_reply"] == base_replies[s["row"]]
        assert s["messages"][-1]["role"] == "user" and s["reference"].startswith("Think about")
        assert s["mean_loss"] > 0 and s["scored_tokens"] > 0
    assert samples(client, job["id"], verdict="win") == []

    with make_client(stack.base_url) as other:
        assert other.get(f"/v1/jobs/{job['id']}/samples").status_code == 404
    for bad in ("nope", "²:base", "99999999999999999999:base"):
        assert client.get(f"/v1/jobs/{job['id']}/samples", params={"after": bad}).status_code == 422, bad


def prompt_only_artifact(client: httpx.Client, prompts: list[str]) -> str:
    """A ChatML artifact whose conversations end with a user turn (a dataset job would refuse them)."""
    from app.db import session_scope
    from app.models import Artifact, new_id
    from app.services.artifacts import local_path
    from tests.api.test_checkpoint_ownership import _team_of

    team_id, artifact_id = _team_of(client), new_id("art")
    uri = f"{team_id}/manual/{artifact_id}.jsonl"
    path = local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps({"messages": [{"role": "user", "content": p}]}) + b"\n" for p in prompts))
    with session_scope() as session:
        session.add(Artifact(id=artifact_id, team_id=team_id, kind="dataset", name="prompts.jsonl", uri=uri,
                             format="chatml_jsonl", rows=len(prompts), status="ready"))
    return artifact_id


def test_a_prompt_only_set_is_sampled_and_judged_against_the_base(fake: FakeOpenRouter, client: httpx.Client,
                                                                  trained: dict[str, Any]) -> None:
    candidate = trained["training"]["id"]
    fake.configure(content=judges.prefers_candidate)
    prompts = prompt_only_artifact(client, [f"Explain case {i}." for i in range(5)])
    r = evaluate(client, eval_artifact=prompts, training_job=candidate, samples=3, max_tokens=8,
                 judge={"model": JUDGE, "against": "reference"})
    assert r.status_code == 201, r.text
    job = wait(client, r.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    result = job["result"]
    assert result["examples"] == result["prompt_only"] == 5 and result["skipped"] == 0
    assert all(m["mean_loss"] is None for m in result["models"])
    assert result["best"] == candidate
    assert next(m for m in result["models"] if m["label"] == candidate)["judge"]["win"] == 3
    for s in samples(client, job["id"], model=candidate):  # no reference: judged against the base
        assert s["reference"] is None and s["opponent"] == "base" and s["verdict"] == "win"


def test_a_rerun_judges_only_what_is_left_and_rescores_nothing(stack: Stack, fake: FakeOpenRouter,
                                                               client: httpx.Client, trained: dict[str, Any]) -> None:
    candidate = trained["training"]["id"]
    fake.configure(content=judges.prefers_candidate, latency=0.5)
    stack.stop_workers()
    try:
        first = stack.start_worker(concurrency=1)
        job = judged(client, trained, samples=10, judge={"model": JUDGE, "concurrency": 1})
        wait_until(lambda: len([s for s in samples(client, job["id"], model=candidate) if s["verdict"]]) >= 3, 60,
                   "some verdicts to be recorded")
        stack.kill_worker(first)
        recorded = [s["row"] for s in samples(client, job["id"], model=candidate) if s["verdict"]]
        stack.start_worker(concurrency=1)
        finished = wait(client, job["id"])
    finally:
        stack.stop_workers()
        stack.start_worker()
    assert finished["status"] == "succeeded" and finished["preemptions"] == 1, finished
    calls = {k: v for k, v in fake.calls.items() if k.startswith(job["id"] + ":")}
    assert len(calls) == 20 and sum(calls.values()) - 20 <= 2  # at most the pair in flight at the kill, again
    assert all(calls[f"{job['id']}:{row}:{candidate}:{order}"] == 1 for row in recorded for order in ("ab", "ba"))
    plans = [e["data"] for e in client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
             if e["type"] == "plan"]
    assert plans[-1]["scored_before"] == 20 and plans[-1]["replies_before"] == 20  # nothing scored or sampled again
    assert plans[-1]["verdicts_before"] >= len(recorded) >= 3
    assert next(m for m in finished["result"]["models"] if m["label"] == candidate)["judge"]["win"] == 10


def test_a_cancel_interrupts_the_judge_and_keeps_its_verdicts(fake: FakeOpenRouter, client: httpx.Client,
                                                              trained: dict[str, Any]) -> None:
    candidate = trained["training"]["id"]
    fake.configure(content=judges.prefers_candidate, latency=1.5)
    job = judged(client, trained, samples=10, judge={"model": JUDGE, "concurrency": 1})
    wait_until(lambda: any(s["verdict"] for s in samples(client, job["id"], model=candidate)), 60, "a verdict")
    client.post(f"/v1/jobs/{job['id']}/cancel")
    ended = wait(client, job["id"])
    assert ended["status"] == "cancelled", ended
    kept = [s for s in samples(client, job["id"], model=candidate) if s["verdict"]]
    calls = {k: v for k, v in fake.calls.items() if k.startswith(job["id"] + ":")}
    assert kept and all(s["verdict"] == "win" for s in kept)
    assert len(calls) < 20  # the pairs after the cancel were never sent
