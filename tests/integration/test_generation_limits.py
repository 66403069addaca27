"""Generation against a provider key, through real Celery workers and the loopback fake OpenRouter: the key's
rate is shared by every job and worker using it, budgets hold when replies carry no usage.cost (priced from
the provider's model list or the server's price table), and a budget nobody can count fails for operators."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.openrouter_server import FakeOpenRouter
from tests.integration.test_generation_jobs import items, submit, wait
from tests.support import Stack

KEY_RPS = 20.0
PRICED = "tuneq-test/priced-in-settings"  # its price in the workers' TUNEQ_GENERATION_PRICES
SETTINGS_PRICE = {"prompt": 2.0, "completion": 8.0}  # USD per million tokens


@pytest.fixture(scope="module")
def limited(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Two worker processes (one job each at a time) whose OpenRouter key is paced at KEY_RPS and which know
    one model's price; the shared worker is stopped meanwhile and restored after."""
    stack.stop_workers()
    env = {**stack.env, "TUNEQ_OPENROUTER_REQUESTS_PER_SECOND": str(KEY_RPS),
           "TUNEQ_GENERATION_PRICES": json.dumps({PRICED: SETTINGS_PRICE})}
    own = Stack(env=env, base_url=stack.base_url, logs=Path(tmp_path_factory.mktemp("limited-logs")))
    try:
        own.start_worker(concurrency=1, queues="generation")
        own.start_worker(concurrency=1, queues="generation")
        yield own
    finally:
        own.stop_workers()
        stack.start_worker()


def starts(fake: FakeOpenRouter, job_id: str) -> list[float]:
    """When the server received each request of the job (its own clock)."""
    return sorted(r["t"] for r in list(fake.requests) if r["headers"].get("x-tuneq-item", "").startswith(job_id))


def rate(stamps: list[float]) -> float:
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def overlap(*runs: list[float], settle: float = 1.0) -> list[float]:
    """Every request of `runs` made while all of them were running, from `settle` seconds after the last one
    started: a starting job opens its connections, so its first requests reach the server bunched (each was
    paced when it reserved its start, not when its connection was ready)."""
    lo, hi = max(r[0] for r in runs) + settle, min(r[-1] for r in runs)
    return sorted(t for r in runs for t in r if lo <= t <= hi)


def test_two_jobs_on_one_key_together_keep_the_keys_rate(limited: Stack, fake: FakeOpenRouter,
                                                         client: httpx.Client) -> None:
    # Each job alone could make 8 / 0.05 s = 160 requests a second; the key allows 20 for both.
    fake.configure(latency=0.05)
    jobs = [submit(client, count=140, prompt="Item {{ index }}", output="completion", concurrency=8)
            for _ in range(2)]
    done = [wait(client, job["id"], timeout=120) for job in jobs]
    assert [d["status"] for d in done] == ["succeeded", "succeeded"], [d["error"] for d in done]
    a, b = (starts(fake, job["id"]) for job in jobs)
    assert len(a) == len(b) == 140
    both = overlap(a, b)
    print(f"\nkey at {KEY_RPS}/s: {len(both)} requests while both jobs ran, {rate(both):.2f}/s")
    assert len(both) >= 100, "the two jobs hardly ran at the same time"
    assert rate(both) == pytest.approx(KEY_RPS, rel=0.05)
    assert rate(sorted(a + b)) <= KEY_RPS * 1.05


def test_a_jobs_own_rate_only_lowers_its_share(limited: Stack, fake: FakeOpenRouter, client: httpx.Client) -> None:
    fake.configure(latency=0.05)
    # The greedy job outlasts the modest one, so the modest one's requests all wait behind the same queue
    # for the key (a job's own pacing comes first, then the key's).
    greedy = submit(client, count=220, prompt="Item {{ index }}", output="completion", concurrency=8,
                    requests_per_second=100)  # more than the key allows: the key's rate holds
    modest = submit(client, count=30, prompt="Item {{ index }}", output="completion", concurrency=4,
                    requests_per_second=4)
    for job in (greedy, modest):
        assert wait(client, job["id"], timeout=120)["status"] == "succeeded"
    g, m = starts(fake, greedy["id"]), starts(fake, modest["id"])
    own = rate([t for t in m if t >= m[0] + 1.0])  # past its start-up
    print(f"\nmodest job {own:.2f}/s (its own 4/s); both {rate(overlap(g, m)):.2f}/s (key {KEY_RPS}/s)")
    assert g[-1] > m[-1], "the greedy job ended first"
    assert own == pytest.approx(4, rel=0.05)
    assert rate(overlap(g, m)) == pytest.approx(KEY_RPS, rel=0.05)


def item_costs(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    return [i for i in items(client, job_id) if i["status"] != "pending"]


def test_budget_without_usage_cost_is_counted_from_the_model_list(limited: Stack, fake: FakeOpenRouter,
                                                                  client: httpx.Client) -> None:
    model = "tuneq-test/listed-price"
    fake.configure(report_cost=False, models={model: {"prompt": 2e-5, "completion": 1e-4}}, latency=0.02)
    job = wait(client, submit(client, model=model, count=300, prompt="Item {{ index }}", output="completion",
                              concurrency=4, max_cost_usd=0.2)["id"])
    assert job["status"] == "succeeded", job["error"]
    result = job["result"]
    done = item_costs(client, job["id"])
    priced = [i["prompt_tokens"] * 2e-5 + i["completion_tokens"] * 1e-4 for i in done]
    assert [i["cost_usd"] for i in done] == pytest.approx(priced)  # tokens × the listed price, per item
    # The job stopped within one concurrency window (4 calls) of its cap.
    assert 0.2 <= result["cost_usd"] <= 0.2 + 4 * max(priced) + 1e-9
    assert "max_cost_usd reached" in result["stop_reason"] and result["pending"] > 0
    assert result["cost_source"] == ["models"]
    assert fake.models_calls <= 2  # once per worker process, then cached


def test_the_servers_price_table_wins_over_the_model_list(limited: Stack, fake: FakeOpenRouter,
                                                          client: httpx.Client) -> None:
    fake.configure(report_cost=False, models={PRICED: {"prompt": 1.0, "completion": 1.0}})
    job = wait(client, submit(client, model=PRICED, count=8, prompt="Item {{ index }}", output="completion")["id"])
    assert job["status"] == "succeeded", job["error"]
    done = item_costs(client, job["id"])
    expected = sum(i["prompt_tokens"] * 2e-6 + i["completion_tokens"] * 8e-6 for i in done)
    assert job["result"]["cost_usd"] == pytest.approx(expected, rel=1e-6)
    assert job["result"]["cost_source"] == ["settings"]


def test_a_budget_nobody_can_count_fails_for_an_operator(limited: Stack, fake: FakeOpenRouter,
                                                         client: httpx.Client) -> None:
    fake.configure(report_cost=False, models={})  # a model list that does not price this model
    job = wait(client, submit(client, model="tuneq-test/unpriced", count=50, prompt="Item {{ index }}",
                              output="completion", concurrency=4)["id"])  # the server's default max_cost_usd
    assert job["status"] == "failed", job
    error = job["error"]
    assert error["code"] == "cost_unknown" and error["user_error"] is False
    assert "TUNEQ_GENERATION_PRICES" in error["message"] and "tuneq-test/unpriced" in error["message"]
    assert "resume" in error["message"]
    assert fake.total_calls <= 8  # stopped at the first reply it could not price (plus the calls in flight)
