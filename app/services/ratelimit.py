"""Rate limits shared by every API process, counted in the broker's Redis with the `limits` library.

Two kinds: requests per API key (`TUNEQ_RATE_LIMIT`, or the key's own `rate_limit`), and failed key lookups per
client address and per key prefix (`TUNEQ_KEY_LOOKUP_RATE_LIMIT`, `TUNEQ_KEY_LOOKUP_PREFIX_RATE_LIMIT`), so a
flood of made-up keys cannot turn every request into a SQL lookup. A limit that is hit is remembered in this
process until its window ends, so refusing a flood costs neither Redis nor SQL. To keep the hot path cheap, a
process takes a tenth of a limit from Redis at a time and spends it locally (a limit under 20 is counted one
by one): near a window's edge a process may let through up to a tenth of a limit more, or refuse that much
early. When Redis cannot be reached
the limiter lets requests through (logging a warning) for a few seconds before trying again: a rate limiter
must not take the API down.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from functools import lru_cache
from urllib.parse import parse_qs, urlsplit

from limits import RateLimitItem, parse_many
from limits.aio.storage import RedisStorage
from limits.aio.strategies import FixedWindowRateLimiter

from app.errors import TuneqError

log = logging.getLogger("tuneq.ratelimit")

RETRY_REDIS_AFTER_SECONDS = 5.0  # after a Redis error, requests pass unchecked this long
KEY_PREFIX = "tuneq-limits"


class TooManyRequests(TuneqError):
    status, code, title = 429, "rate_limited", "Too many requests"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


def redis_url(broker_url: str) -> str | None:
    """The broker as a redis-py URL (kombu's `redis+socket:///path?virtual_host=N` → `unix:///path?db=N`),
    or None when the broker is not Redis."""
    parts = urlsplit(broker_url)
    if parts.scheme == "redis+socket":
        query = parse_qs(parts.query)
        db = (query.get("virtual_host") or query.get("db") or ["0"])[0]
        return f"unix://{parts.path}?db={db or 0}"
    if parts.scheme in ("redis", "rediss"):
        return broker_url
    return None


def storage_uri(broker_url: str) -> str:
    """The broker's Redis as a `limits` async storage URI (the embedded Redis's socket: `async+redis+unix://`)."""
    url = redis_url(broker_url)
    if url is None:
        raise ValueError(f"rate limits need a Redis broker, not {urlsplit(broker_url).scheme}://")
    return f"async+redis+{url}" if url.startswith("unix://") else f"async+{url}"


@lru_cache(maxsize=64)
def parse_limits(text: str) -> tuple[RateLimitItem, ...]:
    """'20/second;600/minute' → limit items; '' → none. Raises ValueError on a bad string."""
    return tuple(parse_many(text)) if text.strip() else ()


def describe(item: RateLimitItem) -> str:
    unit = item.GRANULARITY.name
    return f"{item.amount} per {item.multiples} {unit}s" if item.multiples > 1 else f"{item.amount} per {unit}"


class Limiter:
    """Fixed windows in Redis, plus a local note of which identities are over a limit until when."""

    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url
        self._strategy: FixedWindowRateLimiter | None = None
        self._blocked: dict[str, tuple[float, str]] = {}  # identity → (monotonic deadline, what was exceeded)
        self._allowance: dict[tuple[str, str], list[float]] = {}  # (identity, limit) → [hits left, deadline]
        self._fetching: dict[tuple[str, str], asyncio.Lock] = {}
        self._redis_down_until = 0.0

    def _limiter(self) -> FixedWindowRateLimiter:
        # Made on first use, inside the server's event loop (the async Redis client binds to it).
        if self._strategy is None:
            storage = RedisStorage(storage_uri(self.broker_url), implementation="redispy", key_prefix=KEY_PREFIX,
                                   socket_timeout=0.5, socket_connect_timeout=0.5)
            self._strategy = FixedWindowRateLimiter(storage)
        return self._strategy

    def blocked(self, identity: str) -> tuple[int, str] | None:
        """(seconds until the window ends, the limit) if `identity` is over a limit, from this process's note."""
        hit = self._blocked.get(identity)
        if hit is None:
            return None
        left = hit[0] - time.monotonic()
        if left <= 0:
            self._blocked.pop(identity, None)
            return None
        return max(1, math.ceil(left)), hit[1]

    async def hit(self, identity: str, items: tuple[RateLimitItem, ...]) -> tuple[int, str] | None:
        """Count one request for `identity` against each item; (retry after, limit) when one is exceeded."""
        noted = self.blocked(identity)
        if noted is not None or not items:
            return noted
        if time.monotonic() < self._redis_down_until:
            return None
        try:
            over: tuple[int, str] | None = None
            for item in items:  # every item counts the hit, even after one refused it
                if not await self._take(identity, item):
                    stats = await self._limiter().get_window_stats(item, identity)
                    retry = max(1, math.ceil(stats.reset_time - time.time()))
                    if over is None or retry > over[0]:
                        over = (retry, describe(item))
            if over is not None:
                if len(self._blocked) > 100_000:
                    self._blocked.clear()
                self._blocked[identity] = (time.monotonic() + over[0], over[1])
            return over
        except Exception as exc:  # Redis away, or a bad URL: fail open, loudly, and retry a little later
            self._redis_down_until = time.monotonic() + RETRY_REDIS_AFTER_SECONDS
            log.warning("rate limits unchecked for %.0f s: Redis did not answer (%s)", RETRY_REDIS_AFTER_SECONDS,
                        type(exc).__name__)
        return None

    def _spend(self, slot: tuple[str, str]) -> bool:
        share = self._allowance.get(slot)
        if share is not None and share[0] >= 1 and share[1] > time.monotonic():
            share[0] -= 1
            return True
        return False

    async def _take(self, identity: str, item: RateLimitItem) -> bool:
        """One hit: from this process's share of the window if it has one left, else a new share from Redis
        (one request at a time per limit fetches it; the others wait for it instead of fetching their own)."""
        slot = (identity, item.key_for())
        if self._spend(slot):
            return True
        if len(self._fetching) > 100_000:
            self._fetching.clear()
        async with self._fetching.setdefault(slot, asyncio.Lock()):
            return self._spend(slot) or await self._fetch(slot, identity, item)

    async def _fetch(self, slot: tuple[str, str], identity: str, item: RateLimitItem) -> bool:
        now = time.monotonic()
        chunk = max(1, item.amount // 10) if item.amount >= 20 else 1
        if not await self._limiter().hit(item, identity, cost=chunk):
            # Less than a share is left in this window: spend the rest one by one rather than refuse early.
            self._allowance.pop(slot, None)
            return chunk > 1 and await self._limiter().hit(item, identity, cost=1)
        if len(self._allowance) > 100_000:
            self._allowance.clear()
        self._allowance[slot] = [chunk - 1, now + item.get_expiry()]
        return True
