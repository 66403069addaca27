"""What a chat call cost when the provider's reply has no ``usage.cost`` (any OpenAI-compatible endpoint but
OpenRouter): its token counts × the model's price.

The price comes from the server's table (``TUNEQ_GENERATION_PRICES``, USD per million tokens), which wins, or
from the provider's model list (``GET {base}/models``, OpenAI/OpenRouter format with ``pricing.prompt`` and
``pricing.completion`` in USD per token), fetched once per process and provider and kept for
``TUNEQ_OPENROUTER_MODELS_CACHE_SECONDS`` (a failed fetch is remembered for a minute at most).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

FAILED_FETCH_SECONDS = 60.0

ModelList = Callable[[], Awaitable[list[dict[str, Any]]]]


@dataclass(frozen=True)
class Price:
    prompt: float  # USD per prompt token
    completion: float  # USD per completion token
    source: str  # "settings" or "models"

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens * self.prompt + completion_tokens * self.completion


_cache: dict[str, tuple[float, dict[str, Price]]] = {}  # base URL → (monotonic expiry, model → price)
_cache_lock = threading.Lock()


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def parse_models(data: Any) -> dict[str, Price]:
    """model id (and canonical slug) → price, from a `GET /models` body; models without a usable price
    (missing, not a number, negative as OpenRouter's "-1" for routers) are left out."""
    out: dict[str, Price] = {}
    rows = data.get("data") if isinstance(data, dict) else data
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, dict) or not isinstance(row.get("pricing"), dict):
            continue
        try:
            prompt, completion = float(row["pricing"]["prompt"]), float(row["pricing"]["completion"])
        except (KeyError, TypeError, ValueError):
            continue
        if prompt < 0 or completion < 0:
            continue
        price = Price(prompt, completion, "models")
        for name in (row.get("id"), row.get("canonical_slug")):
            if isinstance(name, str) and name:
                out.setdefault(name, price)
    return out


async def provider_prices(base_url: str, fetch: ModelList, ttl: float) -> dict[str, Price]:
    """The provider's prices, from this process's cache or one `GET /models`."""
    now = time.monotonic()
    with _cache_lock:
        hit = _cache.get(base_url)
    if hit is not None and hit[0] > now:
        return hit[1]
    try:
        prices, keep = parse_models(await fetch()), ttl
    except Exception as exc:  # an endpoint without a model list, or one that is down: no prices for a while
        log.warning("could not read the model list at %s/models (%s); prices from it unknown for %.0f s",
                    base_url, type(exc).__name__, min(ttl, FAILED_FETCH_SECONDS))
        prices, keep = {}, min(ttl, FAILED_FETCH_SECONDS)
    with _cache_lock:
        _cache[base_url] = (time.monotonic() + keep, prices)
    return prices


class CostMeter:
    """The cost of each reply of one job: ``usage.cost`` when the provider sent it, else tokens × price.
    The price is looked up once per job (one lookup at a time; the cache serves the jobs after it)."""

    def __init__(self, *, base_url: str, fetch: ModelList, table: Mapping[str, Any], ttl: float) -> None:
        self.base_url, self.fetch, self.table, self.ttl = base_url.rstrip("/"), fetch, table, ttl
        self._prices: dict[str, Price | None] = {}
        self._lock = asyncio.Lock()
        self.sources: set[str] = set()  # where the costs counted so far came from ("provider", "settings", …)

    async def price(self, *models: str) -> Price | None:
        """The first of `models` (the requested id, then the one the provider says it used) with a price."""
        for model in models:
            entry = self.table.get(model)
            if entry is not None:
                return Price(_get(entry, "prompt") / 1e6, _get(entry, "completion") / 1e6, "settings")
        key = "\n".join(models)
        if key not in self._prices:
            async with self._lock:
                if key not in self._prices:
                    known = await provider_prices(self.base_url, self.fetch, self.ttl)
                    self._prices[key] = next((known[m] for m in models if m in known), None)
        return self._prices[key]

    async def cost(self, *, cost_usd: float | None, prompt_tokens: int, completion_tokens: int,
                   models: tuple[str, ...]) -> float | None:
        """USD for one reply, or None when neither the provider nor a price says."""
        if cost_usd is not None:
            self.sources.add("provider")
            return cost_usd
        if not prompt_tokens and not completion_tokens:
            return None  # no usage at all: nothing to multiply
        price = await self.price(*models)
        if price is None:
            return None
        self.sources.add(price.source)
        return price.cost(prompt_tokens, completion_tokens)


def _get(entry: Any, name: str) -> float:
    return float(entry[name] if isinstance(entry, Mapping) else getattr(entry, name))
