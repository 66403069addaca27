"""Pacing of provider requests: a job's own ``requests_per_second`` (in the job's process) and the provider
key's rate, shared by every job and every worker using that key (docs/architecture.md, "Bounds and limits").

Both space request starts evenly (``1/rate`` apart) instead of counting windows, so a rate never arrives as a
burst at a window's edge. The key's schedule lives in the broker's Redis as one number, the next free start
time (a GCRA "theoretical arrival time"): each request reserves the next slot with one Lua call that reads
Redis's own clock (hosts' clocks may drift apart), and sleeps until it. Window counters (the `limits` and
`pyrate-limiter` libraries) can only say yes/no per window, which makes callers poll and lets a window's
allowance through at once; a reservation is one round trip per request and keeps the spacing exact.

When Redis cannot be reached (an error, or no answer within ``REDIS_TIMEOUT_SECONDS``) the key's limiter
does not stall the job: for ``RETRY_REDIS_AFTER_SECONDS`` it paces this process alone at the key's rate
(logging a warning), then tries Redis again. During such an outage
several processes together may exceed the key's rate; each one alone never does.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from typing import Any, Protocol

from app.services.ratelimit import redis_url

log = logging.getLogger(__name__)

KEY_PREFIX = "tuneq-limits:provider:"
RETRY_REDIS_AFTER_SECONDS = 5.0
REDIS_TIMEOUT_SECONDS = 5.0  # generous: a busy host can stall a process for a second; a provider call takes longer

# KEYS[1]: the key's next free start (µs, Redis clock); ARGV[1]: the interval between starts (µs).
# Returns how many µs the caller waits before starting. The key expires once its schedule is in the past.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local slot = tonumber(redis.call('GET', KEYS[1]) or '0')
if slot < now then slot = now end
local nxt = slot + interval
redis.call('SET', KEYS[1], string.format('%.0f', nxt), 'PX', math.floor((nxt - now) / 1000) + 1000)
return math.floor(slot - now)
"""


class Limiter(Protocol):
    async def acquire(self) -> None: ...


class RateLimiter:
    """Paces request starts to at most ``rps`` per second across all coroutines of this process (None/0 = off).

    Every caller reserves the next free slot on an evenly spaced schedule (``1/rps`` apart, never earlier than
    now, so idle time does not bank a burst) and sleeps until it. Slots are computed from the schedule, not from
    when a sleeper woke, so timer jitter does not accumulate into drift. Reserving is a few arithmetic operations
    under a lock, so the limiter is also safe to share between threads (each thread sleeping on its own loop).
    """

    def __init__(self, rps: float | None) -> None:
        if rps is not None and rps < 0:
            raise ValueError("rps must be positive, 0 or None")
        self.rps = float(rps) if rps else None
        self._interval = 1.0 / self.rps if self.rps else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RateLimiter(rps={self.rps})"

    def reserve(self) -> float:
        """Reserve the next slot; returns how many seconds to wait before starting."""
        if not self._interval:
            return 0.0
        with self._lock:
            now = time.monotonic()
            slot = self._next if self._next > now else now
            self._next = slot + self._interval
        return slot - now

    async def acquire(self) -> None:
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)


def key_id(base_url: str, api_key: str) -> str:
    """A name for (provider, key) that does not reveal the key: the Redis key holding its schedule."""
    digest = hashlib.sha256(f"{base_url.rstrip('/')}\n{api_key}".encode()).hexdigest()[:24]
    return KEY_PREFIX + digest


class SharedRateLimiter:
    """One provider key's rate, shared through Redis by every process that uses the key (see the module
    docstring). Create and close it on the event loop that uses it."""

    def __init__(self, url: str, key: str, rps: float) -> None:
        if rps <= 0:
            raise ValueError("rps must be positive")
        import redis.asyncio as aioredis

        self.rps = float(rps)
        self._key = key
        self._interval_us = max(1, round(1_000_000 / self.rps))
        self._redis = aioredis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT_SECONDS,
                                              socket_connect_timeout=REDIS_TIMEOUT_SECONDS)
        self._script = self._redis.register_script(_RESERVE)
        self._local = RateLimiter(self.rps)  # while Redis is away
        self._down_until = 0.0

    def __repr__(self) -> str:
        return f"SharedRateLimiter(rps={self.rps})"

    async def acquire(self) -> None:
        if time.monotonic() < self._down_until:
            await self._local.acquire()
            return
        try:
            wait_us = int(await self._script(keys=[self._key], args=[self._interval_us]))
        except Exception as exc:  # Redis away (or refusing scripts): pace this process alone for a while
            if time.monotonic() >= self._down_until:
                log.warning("provider key rate paced in this process only for %.0f s: Redis did not answer (%s)",
                            RETRY_REDIS_AFTER_SECONDS, type(exc).__name__)
            self._down_until = time.monotonic() + RETRY_REDIS_AFTER_SECONDS
            await self._local.acquire()
            return
        if wait_us > 0:
            await asyncio.sleep(wait_us / 1_000_000)

    async def aclose(self) -> None:
        try:
            await self._redis.aclose()
        except Exception:  # closing a connection to a Redis that went away
            pass


class Pacer:
    """A job's requests: its own rate first (so it never holds a shared slot while waiting on itself), then
    the key's shared rate. Either may be None (off); a job's rate can only lower its share of the key's."""

    def __init__(self, job: RateLimiter | None, key: Limiter | None) -> None:
        self.job, self.key = job, key

    def __repr__(self) -> str:
        return f"Pacer(job={self.job!r}, key={self.key!r})"

    async def acquire(self) -> None:
        if self.job is not None:
            await self.job.acquire()
        if self.key is not None:
            await self.key.acquire()


def server_key_limiter(settings: Any, api_key: str) -> Limiter | None:
    """The server key's rate (TUNEQ_OPENROUTER_REQUESTS_PER_SECOND), shared through the broker's Redis by every
    job and worker that calls the provider with that key (generation, the evaluation judge), if one is set."""
    rps, url = settings.openrouter_requests_per_second, redis_url(settings.resolved_broker_url)
    if not rps:
        return None
    if url is None:  # a broker that is not Redis: this process alone
        return RateLimiter(rps)
    return SharedRateLimiter(url, key_id(settings.openrouter_base_url, api_key), rps)
