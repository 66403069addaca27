"""OpenRouter (or any OpenAI-compatible) chat-completions client for generation and judge jobs.

One ``OpenRouterClient`` owns one ``httpx.AsyncClient`` and is meant to be created inside a task, used by many
concurrent ``chat()`` coroutines on one event loop, and closed at the end. Each call retries transient failures
(429, 408, 409, 5xx, timeouts, connection errors, 200-with-error-body, malformed JSON) with full-jitter
exponential backoff that honours ``Retry-After``; configuration problems that would fail every item (the
server's key or credits refused, moderation, unknown model) raise a fatal ``OpenRouterError`` at once. What a
failure means lives in ``openrouter_errors``; request pacing (a job's rate, the key's shared rate) in
``pacing``; the connection pools in ``http_pool``; prices for replies without ``usage.cost`` in ``pricing``.

The API key never appears in an exception message, a log line or a repr.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from workers.clients.http_pool import ShardedTransport
from workers.clients.openrouter_errors import (
    OPERATOR_CODES,
    OUTAGE_CODES,
    RETRY_AFTER_MAX,
    Attempt,
    OpenRouterError,
    classify,
    int_code,
    retry_after,
    snip,
)
from workers.clients.pacing import Limiter, RateLimiter

__all__ = ["DEFAULT_BASE_URL", "OPERATOR_CODES", "OUTAGE_CODES", "ChatResult", "OpenRouterClient",
           "OpenRouterError", "RateLimiter"]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://openrouter.ai/api/v1"
MODELS_TIMEOUT = httpx.Timeout(15, connect=5)  # the model list is a price lookup: never wait on it for long


@dataclass(frozen=True)
class ChatResult:
    content: str  # choices[0].message.content ("" if null)
    model: str  # the model the provider says it used
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None  # usage.cost; None when the provider did not report it
    calls: int  # HTTP requests made for this result (1 + retries)
    finish_reason: str | None


class OpenRouterClient:
    """Async chat-completions client; see the module docstring."""

    def __init__(self, *, api_key: str, base_url: str = DEFAULT_BASE_URL, app_name: str = "tuneq",
                 referer: str | None = None,
                 timeout: httpx.Timeout | float = httpx.Timeout(120, connect=10),
                 max_attempts: int = 5, backoff_base: float = 0.5, backoff_max: float = 30.0,
                 limiter: Limiter | None = None, max_connections: int = 64,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        if not api_key:
            raise OpenRouterError("invalid_api_key", "No OpenRouter API key is configured on the workers: ask an "
                                  "operator to set OPENROUTER_API_KEY.", fatal=True)
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self._api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.app_name = app_name
        self.referer = referer
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.limiter = limiter
        self._url = f"{self.base_url}/chat/completions"
        headers = {"Authorization": f"Bearer {api_key}", "X-Title": app_name, "Content-Type": "application/json",
                   "Accept": "application/json"}
        if referer:
            headers["HTTP-Referer"] = referer
        timeout_ = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(float(timeout))
        if transport is None:
            transport = ShardedTransport(max_connections)
        self._http = httpx.AsyncClient(headers=headers, timeout=timeout_, transport=transport,
                                       follow_redirects=False)
        self._rng = random.Random()

    def __repr__(self) -> str:
        return (f"OpenRouterClient(base_url={self.base_url!r}, app_name={self.app_name!r}, "
                f"max_attempts={self.max_attempts}, limiter={self.limiter!r})")

    async def __aenter__(self) -> OpenRouterClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ------------------------------------------------------------------ public calls

    async def chat(self, messages: list[dict], *, model: str, temperature: float | None = None,
                   top_p: float | None = None, max_tokens: int | None = None, seed: int | None = None,
                   response_format: dict | None = None,
                   extra_headers: dict[str, str] | None = None) -> ChatResult:
        body: dict[str, Any] = {"model": model, "messages": messages}
        for name, value in (("temperature", temperature), ("top_p", top_p), ("max_tokens", max_tokens),
                            ("seed", seed)):
            if value is not None:
                body[name] = value
        if response_format is not None:
            body["response_format"] = response_format
        body["usage"] = {"include": True}
        payload = orjson.dumps(body)

        calls = 0
        while True:
            if self.limiter is not None:
                await self.limiter.acquire()
            calls += 1
            try:
                return await self._attempt(payload, model, extra_headers, calls)
            except Attempt as failure:
                message = self._scrub(failure.message)
                if failure.fatal or not failure.retry:
                    raise OpenRouterError(failure.code, message, status=failure.status, fatal=failure.fatal,
                                          retryable=False, calls=calls) from None
                if calls >= self.max_attempts:
                    plural = "s" if calls > 1 else ""
                    advice = " or lower the request rate" if failure.code == "rate_limited" else ""
                    raise OpenRouterError(
                        failure.code, f"{message} Gave up after {calls} attempt{plural}; try again later{advice}.",
                        status=failure.status, retryable=True, calls=calls) from None
                wait = self._backoff(calls, failure.retry_after)
                log.info("openrouter attempt %d failed (%s, status %s); retrying in %.2fs",
                         calls, failure.code, failure.status, wait)
                await asyncio.sleep(wait)

    async def list_models(self) -> list[dict[str, Any]]:
        """``GET {base}/models``: the provider's model list (OpenAI/OpenRouter format), one attempt."""
        try:
            resp = await self._http.get(f"{self.base_url}/models", timeout=MODELS_TIMEOUT)
        except httpx.HTTPError as exc:
            raise OpenRouterError("provider_error", f"Could not read {self.base_url}/models "
                                  f"({type(exc).__name__}).", retryable=True, calls=1) from None
        if resp.status_code != 200:
            raise OpenRouterError("provider_error", f"{self.base_url}/models answered {resp.status_code}.",
                                  status=resp.status_code, calls=1)
        try:
            data = orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            raise OpenRouterError("malformed_response", f"{self.base_url}/models did not return JSON.",
                                  status=200, calls=1) from None
        rows = data.get("data") if isinstance(data, dict) else data
        return [row for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []

    # ------------------------------------------------------------------ internals

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            wait = min(max(retry_after, 0.0), RETRY_AFTER_MAX)
            return wait + self._rng.uniform(0.0, min(0.1 * wait, 1.0))  # a little spread, never earlier
        cap = min(self.backoff_max, self.backoff_base * (2 ** (attempt - 1)))
        return self._rng.uniform(0.0, cap)

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key in text else text

    async def _attempt(self, payload: bytes, model: str, extra_headers: dict[str, str] | None,
                       attempt: int) -> ChatResult:
        try:
            resp = await self._http.post(self._url, content=payload, headers=extra_headers)
        except httpx.TimeoutException as exc:
            raise Attempt("timeout", f"OpenRouter did not answer in time ({type(exc).__name__}).") from None
        except httpx.TransportError as exc:
            raise Attempt("provider_error",
                          f"Could not reach OpenRouter at {self.base_url} ({type(exc).__name__}: "
                          f"{snip(str(exc))}).") from None

        status = resp.status_code
        data: Any = None
        try:
            data = orjson.loads(resp.content) if resp.content.strip() else None
        except orjson.JSONDecodeError:
            data = None

        if status != 200:
            raise classify(status, data, resp.text, retry_after(resp.headers), model)

        if not isinstance(data, dict):
            raise Attempt("malformed_response",
                          f"OpenRouter returned a response that is not a JSON object: {snip(resp.text, 120)!r}.",
                          status=status)
        if "error" in data and data["error"]:
            code = int_code(data["error"])
            raise classify(code if code is not None else 502, data, "", retry_after(resp.headers), model,
                           in_body=True)
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise Attempt("malformed_response", "OpenRouter returned a response without choices.", status=status)
        choice = choices[0]
        if choice.get("error"):  # a provider failure mid-generation (finish_reason "error")
            err = choice["error"]
            text = err.get("message") if isinstance(err, dict) else str(err)
            raise Attempt("provider_error", f"The model provider failed mid-generation: {snip(str(text))}.",
                          status=status)
        message = choice.get("message")
        if not isinstance(message, dict):
            raise Attempt("malformed_response", "OpenRouter returned a choice without a message.", status=status)
        usage_raw = data.get("usage")
        usage: dict[str, Any] = usage_raw if isinstance(usage_raw, dict) else {}
        return ChatResult(
            content=_content_text(message.get("content")),
            model=str(data.get("model") or model),
            prompt_tokens=_as_int(usage.get("prompt_tokens")),
            completion_tokens=_as_int(usage.get("completion_tokens")),
            cost_usd=_as_cost(usage.get("cost")),
            calls=attempt,
            finish_reason=choice.get("finish_reason"),
        )


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def _as_int(value: Any) -> int:
    try:
        return int(value) if value is not None else 0
    except (TypeError, ValueError):
        return 0


def _as_cost(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        cost = float(value)
    except (TypeError, ValueError):
        return None
    return cost if cost >= 0 else None
