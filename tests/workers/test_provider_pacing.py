"""A provider key's rate shared through Redis (workers/clients/pacing.py) and prices for replies without
usage.cost (workers/clients/pricing.py), against a private redis-server and plain callables."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from app.services.ratelimit import redis_url
from app.settings import GenerationPrice
from tests.support import free_port, start_redis_server
from workers.clients import pricing
from workers.clients.pacing import Pacer, RateLimiter, SharedRateLimiter, key_id


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    proc = start_redis_server(port, tmp_path_factory.mktemp("redis"))
    yield port
    proc.terminate()
    proc.wait(timeout=10)


def paced_starts(make_limiter: Any, callers: int, n: int) -> list[float]:
    """`n` request starts by `callers` coroutines through one limiter made on this thread's loop."""
    starts: list[float] = []

    async def go() -> None:
        limiter = make_limiter()
        left = itertools.count()

        async def caller() -> None:
            while next(left) < n:
                await limiter.acquire()
                starts.append(time.monotonic())
                await asyncio.sleep(0.005)

        try:
            await asyncio.gather(*(caller() for _ in range(callers)))
        finally:
            if hasattr(limiter, "aclose"):
                await limiter.aclose()

    asyncio.run(go())
    return starts


def rate(stamps: list[float]) -> float:
    stamps = sorted(stamps)
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def test_two_processes_on_one_key_share_its_rate(redis_port: int) -> None:
    """Two limiters on one key, each on its own thread, connection and event loop (as two worker processes
    would be), each with more callers than the rate needs: together they start 40 requests a second."""
    url, key = f"redis://127.0.0.1:{redis_port}/0", key_id("http://provider/api/v1", "sk-shared-1")
    per_side: list[list[float]] = [[], []]

    def side(i: int) -> None:
        per_side[i] = paced_starts(lambda: SharedRateLimiter(url, key, 40), callers=8, n=60)

    threads = [threading.Thread(target=side, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    both = sorted(per_side[0] + per_side[1])
    # Over the span where both sides ran, the key's rate holds (each side alone would take all 40).
    lo, hi = max(min(s) for s in per_side), min(max(s) for s in per_side)
    window = [t for t in both if lo <= t <= hi]
    assert len(window) > 60
    assert rate(window) == pytest.approx(40, rel=0.05)
    assert rate(both) == pytest.approx(40, rel=0.05)


def test_other_keys_are_paced_apart(redis_port: int) -> None:
    url = f"redis://127.0.0.1:{redis_port}/0"
    assert key_id("http://p/v1", "sk-a") != key_id("http://p/v1", "sk-b") != key_id("http://q/v1", "sk-a")
    assert "sk-a" not in key_id("http://p/v1", "sk-a")
    first = paced_starts(lambda: SharedRateLimiter(url, key_id("http://p/v1", "sk-a"), 50), callers=4, n=30)
    # A key that another job just paced starts at once: its schedule is its own.
    other = paced_starts(lambda: SharedRateLimiter(url, key_id("http://p/v1", "sk-b"), 50), callers=4, n=30)
    assert rate(first) == pytest.approx(50, rel=0.1) and rate(other) == pytest.approx(50, rel=0.1)


def test_without_redis_the_key_is_paced_in_this_process(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="workers.clients.pacing")
    url = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens
    starts = paced_starts(lambda: SharedRateLimiter(url, key_id("http://p/v1", "sk-down"), 20), callers=4, n=30)
    assert len(starts) == 30  # the job goes on ...
    assert rate(starts) == pytest.approx(20, rel=0.1)  # ... at the key's rate, from this process alone
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings and "Redis did not answer" in warnings[0] and "sk-down" not in " ".join(warnings)


def test_a_jobs_own_rate_only_lowers_its_share(redis_port: int) -> None:
    url, key = f"redis://127.0.0.1:{redis_port}/0", key_id("http://p/v1", "sk-pacer")
    slow = paced_starts(lambda: Pacer(RateLimiter(10), SharedRateLimiter(url, key, 40)), callers=8, n=20)
    assert rate(slow) == pytest.approx(10, rel=0.1)
    fast = paced_starts(lambda: Pacer(RateLimiter(1000), SharedRateLimiter(url, key, 40)), callers=8, n=40)
    assert rate(fast) == pytest.approx(40, rel=0.1)


def test_redis_url_from_the_broker_url() -> None:
    assert redis_url("redis+socket:///var/redis.sock") == "unix:///var/redis.sock?db=0"
    assert redis_url("redis+socket:///r.sock?virtual_host=3") == "unix:///r.sock?db=3"
    assert redis_url("redis://127.0.0.1:6379/3") == "redis://127.0.0.1:6379/3"
    assert redis_url("amqp://guest@localhost//") is None


# ---------------------------------------------------------------------- prices


MODELS = {"data": [
    {"id": "moonshotai/kimi-k2", "canonical_slug": "moonshotai/kimi-k2-0711",
     "pricing": {"prompt": "0.0000006", "completion": "0.0000025"}},
    {"id": "openrouter/auto", "pricing": {"prompt": "-1", "completion": "-1"}},
    {"id": "no/pricing"},
    {"id": "bad/pricing", "pricing": {"prompt": "free"}},
]}


class Fetch:
    def __init__(self, body: Any = MODELS, fail: bool = False) -> None:
        self.body, self.fail, self.calls = body, fail, 0

    async def __call__(self) -> Any:
        self.calls += 1
        if self.fail:
            raise RuntimeError("no model list here")
        return self.body


@pytest.fixture(autouse=True)
def _fresh_price_cache() -> Iterator[None]:
    pricing.clear_cache()
    yield
    pricing.clear_cache()


def meter(fetch: Fetch, table: dict[str, Any] | None = None, ttl: float = 3600,
          base: str = "http://p/v1") -> pricing.CostMeter:
    return pricing.CostMeter(base_url=base, fetch=fetch, table=table or {}, ttl=ttl)


def cost(m: pricing.CostMeter, *, usd: float | None = None, model: str = "moonshotai/kimi-k2",
         tokens: tuple[int, int] = (1000, 2000)) -> float | None:
    return asyncio.run(m.cost(cost_usd=usd, prompt_tokens=tokens[0], completion_tokens=tokens[1], models=(model,)))


def test_the_model_list_prices_tokens_and_is_fetched_once_per_ttl() -> None:
    fetch = Fetch()
    assert cost(meter(fetch)) == pytest.approx(1000 * 6e-7 + 2000 * 2.5e-6)
    assert cost(meter(fetch), model="moonshotai/kimi-k2-0711") == pytest.approx(0.0056)  # canonical slug
    assert fetch.calls == 1  # the next jobs of this process use the cache
    assert cost(meter(fetch, base="http://other/v1")) is not None and fetch.calls == 2  # per provider
    expired = Fetch()
    assert cost(meter(expired, ttl=0, base="http://ttl/v1")) is not None
    assert cost(meter(expired, ttl=0, base="http://ttl/v1")) is not None and expired.calls == 2


def test_unusable_prices_are_unknown() -> None:
    assert set(pricing.parse_models(MODELS)) == {"moonshotai/kimi-k2", "moonshotai/kimi-k2-0711"}
    for model in ("openrouter/auto", "no/pricing", "bad/pricing", "never/heard-of"):
        assert cost(meter(Fetch()), model=model) is None


def test_the_settings_table_wins_and_usage_cost_wins_over_both() -> None:
    fetch = Fetch()
    table = {"moonshotai/kimi-k2": GenerationPrice(prompt=1.0, completion=3.0)}  # USD per million tokens
    m = meter(fetch, table)
    assert cost(m) == pytest.approx(1000 * 1e-6 + 2000 * 3e-6) and fetch.calls == 0
    assert cost(m, usd=0.25) == 0.25
    assert m.sources == {"settings", "provider"}


def test_no_usage_or_no_model_list_means_no_cost() -> None:
    assert cost(meter(Fetch()), tokens=(0, 0)) is None
    failing = Fetch(fail=True)
    assert cost(meter(failing)) is None
    assert cost(meter(failing)) is None and failing.calls == 1  # a failed fetch is remembered a while
