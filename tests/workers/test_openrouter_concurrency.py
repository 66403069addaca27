"""How the OpenRouter client uses its connections and paces its requests, counted by the loopback fake
server (peak requests in flight, connections opened, arrival times). Speed against the ideal is measured in
bench/generation.py, not asserted here."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.fakes.openrouter_server import FakeOpenRouter
from tests.workers.test_openrouter_client import MODEL, MSGS, item, make
from workers.clients.openrouter import ChatResult, RateLimiter


def test_rate_limiter_holds_50_rps_with_32_callers() -> None:
    async def go() -> tuple[int, float]:
        limiter = RateLimiter(50)
        starts: list[float] = []
        t0 = time.monotonic()
        deadline = t0 + 3.0

        async def worker() -> None:
            while True:
                await limiter.acquire()
                now = time.monotonic()
                if now >= deadline:
                    return
                starts.append(now)
                await asyncio.sleep(0.01)

        await asyncio.gather(*(worker() for _ in range(32)))
        return len(starts), (starts[-1] - starts[0]) / (len(starts) - 1)

    n, gap = asyncio.run(go())
    rate = 1.0 / gap
    print(f"\nlimiter: {n} starts in 3 s, achieved {rate:.2f} rps (target 50)")
    assert abs(rate - 50) <= 2.5
    assert abs(n / 3.0 - 50) <= 2.5


def test_rate_limiter_off_and_validation() -> None:
    assert RateLimiter(None).reserve() == 0.0 and RateLimiter(0).reserve() == 0.0
    with pytest.raises(ValueError):
        RateLimiter(-1)


def test_client_requests_are_paced_by_the_limiter(seeded_openrouter: FakeOpenRouter) -> None:
    seeded_openrouter.configure(latency=0.05)

    async def go() -> float:
        limiter = RateLimiter(50)
        deadline = time.monotonic() + 2.0
        async with make(seeded_openrouter, limiter=limiter) as orc:
            async def worker(w: int) -> None:
                i = 0
                while time.monotonic() < deadline:
                    await orc.chat(MSGS, model=MODEL, extra_headers=item(f"p-{w}-{i}"))
                    i += 1

            await asyncio.gather(*(worker(w) for w in range(32)))
        return time.monotonic()

    asyncio.run(go())
    stamps = sorted(r["t"] for r in seeded_openrouter.requests)
    # The rate the server saw (without the limiter, 32 callers at 50 ms would make ~640 rps): requests over
    # their span, which a busy box waking a few paced sleepers late at once (bunching them) hardly moves.
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    print(f"\nclient via limiter: {len(stamps)} requests, server saw one every {1000 / rate:.1f} ms (target 20)")
    assert 45 <= rate <= 55


def test_32_callers_keep_32_requests_in_flight_on_32_reused_connections(seeded_openrouter: FakeOpenRouter) -> None:
    """Concurrency is real: 32 callers have 32 requests at the server at once, each on its own kept-alive
    connection. (Items per second against the ideal is measured in bench/generation.py.)"""
    seeded_openrouter.configure(latency=0.2, cost_per_call=0.0001)
    concurrency, rounds = 32, 4

    async def go() -> None:
        async with make(seeded_openrouter) as orc:
            async def worker(w: int) -> None:
                for i in range(rounds):
                    await orc.chat(MSGS, model=MODEL, extra_headers=item(f"tp-{w}-{i}"))

            await asyncio.gather(*(worker(w) for w in range(concurrency)))

    asyncio.run(go())
    assert seeded_openrouter.total_calls == concurrency * rounds
    assert seeded_openrouter.max_in_flight == concurrency
    assert len(seeded_openrouter.connections) == concurrency  # kept alive: 128 calls on 32 connections


def test_more_callers_than_connections(seeded_openrouter: FakeOpenRouter) -> None:
    seeded_openrouter.configure(latency=0.1)

    async def go() -> list[ChatResult]:
        async with make(seeded_openrouter, max_connections=6) as orc:
            return await asyncio.gather(*(orc.chat(MSGS, model=MODEL, extra_headers=item(f"m-{i}"))
                                          for i in range(30)))

    results = asyncio.run(go())
    assert all(r.calls == 1 for r in results) and seeded_openrouter.total_calls == 30
    assert seeded_openrouter.max_in_flight == 6  # the connection limit holds ...
    per_connection = seeded_openrouter.connections
    assert len(per_connection) == 6  # ... on six connections opened once each ...
    assert max(per_connection.values()) <= 6  # ... and the queue is spread over all six (30 / 6 = 5 each)
