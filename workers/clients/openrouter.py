"""OpenRouter (or any OpenAI-compatible) chat-completions client for generation and judge jobs.

One ``OpenRouterClient`` owns one ``httpx.AsyncClient`` and is meant to be created inside a task, used by many
concurrent ``chat()`` coroutines on one event loop, and closed at the end. Each call retries transient failures
(429, 408, 409, 5xx, timeouts, connection errors, 200-with-error-body, malformed JSON) with full-jitter
exponential backoff that honours ``Retry-After``; configuration problems that would fail every item (bad key, no
credits, moderation/forbidden, unknown model) raise a fatal ``OpenRouterError`` at once.

The AsyncClient's connections live in several small httpcore pools behind one transport (``_ShardedTransport``):
httpcore's pool bookkeeping costs O(connections) per request, which at 32-64 concurrent calls was the main CPU
cost of the whole client.

The API key never appears in an exception message, a log line or a repr.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://openrouter.ai/api/v1"
RETRY_AFTER_MAX = 60.0  # never wait longer than this for one Retry-After
_SNIPPET = 300  # provider text quoted in messages is cut to this many characters

# Phrases that make a 400/404 a configuration problem (the model id or routing), not an item problem.
_MODEL_HINTS = ("model", "no endpoints found", "no allowed providers")
# Phrases that make a model-mentioning 400 an item problem after all ("This model's maximum context length...").
_ITEM_HINTS = ("context length", "context window", "maximum context", "too many tokens", "too long")


@dataclass(frozen=True)
class ChatResult:
    content: str  # choices[0].message.content ("" if null)
    model: str  # the model the provider says it used
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float  # usage.cost when present, else 0.0
    calls: int  # HTTP requests made for this result (1 + retries)
    finish_reason: str | None


# Error codes of calls that failed on the service's side after every retry (see OpenRouterError.outage).
OUTAGE_CODES = ("provider_error", "timeout", "rate_limited")


class OpenRouterError(Exception):
    """A chat call that did not produce a result.

    ``code``: stable machine code (``invalid_api_key``, ``insufficient_credits``, ``forbidden``, ``bad_request``,
    ``rate_limited``, ``provider_error``, ``timeout``, ``malformed_response``); ``message``: a sentence a person
    can act on (never the API key); ``status``: HTTP status (or the code of a 200-with-error-body) or None;
    ``fatal``: the whole job must stop; ``retryable``: worth another try later; ``calls``: requests made.
    """

    def __init__(self, code: str, message: str, *, status: int | None = None, fatal: bool = False,
                 retryable: bool = False, calls: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.fatal = fatal
        self.retryable = retryable
        self.calls = calls

    def __str__(self) -> str:
        return self.message

    @property
    def outage(self) -> bool:
        """OpenRouter or its provider kept failing (5xx, timeouts, connection errors, rate limits) through all
        retries: not the request's fault, worth trying again later."""
        return self.retryable and self.code in OUTAGE_CODES

    def __repr__(self) -> str:
        return (f"OpenRouterError(code={self.code!r}, status={self.status!r}, fatal={self.fatal}, "
                f"retryable={self.retryable}, calls={self.calls}, message={self.message!r})")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (Celery result backends, multiprocessing)
        return (_rebuild_error, (self.code, self.message, self.status, self.fatal, self.retryable, self.calls))


def _rebuild_error(code: str, message: str, status: int | None, fatal: bool, retryable: bool,
                   calls: int) -> OpenRouterError:
    return OpenRouterError(code, message, status=status, fatal=fatal, retryable=retryable, calls=calls)


class RateLimiter:
    """Paces request starts to at most ``rps`` per second across all coroutines (None/0 = off).

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


class _ShardedTransport(httpx.AsyncBaseTransport):
    """``max_connections`` keep-alive connections split over small httpcore pools.

    httpcore's pool rescans every connection (polling idle sockets) for every queued request on every
    acquire/release, so one 32-connection pool spends ~2.4 ms CPU per request at 32 concurrent calls (and grows
    quadratically); pools of 4 cost ~0.7 ms. Each request goes to the least-loaded pool; pools are created only
    when the ones in use are full, so low concurrency stays on one or two warm pools.
    """

    def __init__(self, max_connections: int, *, per_pool: int = 4) -> None:
        total, per_pool = max(1, max_connections), max(1, per_pool)
        # Pool sizes add up to exactly max_connections: [4, 4, ..., remainder].
        self._sizes = [per_pool] * (total // per_pool) + ([total % per_pool] if total % per_pool else [])
        # One TLS context for every pool: each pool would otherwise load the CA bundle (~20 ms) on the loop.
        self._ssl = httpx.create_ssl_context()
        self._pools: list[httpx.AsyncHTTPTransport] = []
        self._load: list[int] = []

    def _pick(self) -> int:
        best = -1
        for i, load in enumerate(self._load):
            if load < self._sizes[i]:
                return i
            if best < 0 or load - self._sizes[i] < self._load[best] - self._sizes[best]:
                best = i
        if len(self._pools) < len(self._sizes):
            size = self._sizes[len(self._pools)]
            limits = httpx.Limits(max_connections=size, max_keepalive_connections=size, keepalive_expiry=30.0)
            self._pools.append(httpx.AsyncHTTPTransport(verify=self._ssl, limits=limits))
            self._load.append(0)
            return len(self._pools) - 1
        return best  # every connection is busy: queue on the pool with the shortest queue

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        i = self._pick()
        self._load[i] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._load[i] -= 1

        try:
            response = await self._pools[i].handle_async_request(request)
        except BaseException:
            release()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=_ReleasingStream(response.stream, release), extensions=response.extensions)

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


class _ReleasingStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._inner, self._release = inner, release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._release()


class _Attempt(Exception):
    """Internal: why one attempt failed, and how to go on."""

    def __init__(self, code: str, message: str, *, status: int | None = None, fatal: bool = False,
                 retry: bool = True, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status
        self.fatal, self.retry, self.retry_after = fatal, retry, retry_after


class OpenRouterClient:
    """Async chat-completions client; see the module docstring."""

    def __init__(self, *, api_key: str, base_url: str = DEFAULT_BASE_URL, app_name: str = "tuneq",
                 referer: str | None = None,
                 timeout: httpx.Timeout | float = httpx.Timeout(120, connect=10),
                 max_attempts: int = 5, backoff_base: float = 0.5, backoff_max: float = 30.0,
                 limiter: RateLimiter | None = None, max_connections: int = 64,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        if not api_key:
            raise OpenRouterError("invalid_api_key", "No OpenRouter API key is configured. Set OPENROUTER_API_KEY.",
                                  fatal=True)
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
            transport = _ShardedTransport(max_connections)
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

    # ------------------------------------------------------------------ public call

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
            except _Attempt as failure:
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
            raise _Attempt("timeout", f"OpenRouter did not answer in time ({type(exc).__name__}).") from None
        except httpx.TransportError as exc:
            raise _Attempt("provider_error",
                           f"Could not reach OpenRouter at {self.base_url} ({type(exc).__name__}: "
                           f"{_snip(str(exc))}).") from None

        status = resp.status_code
        data: Any = None
        try:
            data = orjson.loads(resp.content) if resp.content.strip() else None
        except orjson.JSONDecodeError:
            data = None

        if status != 200:
            err_msg, err_extra = _error_text(data, resp.text)
            raise _classify(status, err_msg, err_extra, _retry_after(resp.headers), model)

        if not isinstance(data, dict):
            raise _Attempt("malformed_response",
                           f"OpenRouter returned a response that is not a JSON object: {_snip(resp.text, 120)!r}.",
                           status=status)
        if "error" in data and data["error"]:
            err_msg, err_extra = _error_text(data, "")
            code = _int_code(data["error"])
            raise _classify(code if code is not None else 502, err_msg, err_extra,
                            _retry_after(resp.headers), model, in_body=True)
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise _Attempt("malformed_response", "OpenRouter returned a response without choices.", status=status)
        choice = choices[0]
        if choice.get("error"):  # a provider failure mid-generation (finish_reason "error")
            err = choice["error"]
            text = err.get("message") if isinstance(err, dict) else str(err)
            raise _Attempt("provider_error", f"The model provider failed mid-generation: {_snip(str(text))}.",
                           status=status)
        message = choice.get("message")
        if not isinstance(message, dict):
            raise _Attempt("malformed_response", "OpenRouter returned a choice without a message.", status=status)
        usage_raw = data.get("usage")
        usage: dict[str, Any] = usage_raw if isinstance(usage_raw, dict) else {}
        return ChatResult(
            content=_content_text(message.get("content")),
            model=str(data.get("model") or model),
            prompt_tokens=_as_int(usage.get("prompt_tokens")),
            completion_tokens=_as_int(usage.get("completion_tokens")),
            cost_usd=_as_float(usage.get("cost")),
            calls=attempt,
            finish_reason=choice.get("finish_reason"),
        )


# ---------------------------------------------------------------------- helpers


def _classify(status: int, err_msg: str, err_extra: str, retry_after: float | None, model: str,
              *, in_body: bool = False) -> _Attempt:
    """Map a failed response (an HTTP status, or the code of a 200-with-error-body) to what to do next."""
    where = "an error in a 200 response" if in_body else f"HTTP {status}"
    said = f": {_snip(err_msg)}" if err_msg else ""
    if status == 401:
        return _Attempt("invalid_api_key",
                        "OpenRouter rejected the API key (401). Set OPENROUTER_API_KEY to a valid key.",
                        status=status, fatal=True)
    if status == 402:
        return _Attempt("insufficient_credits",
                        "OpenRouter says the account has no credits left (402). Add credits or lower max_cost_usd.",
                        status=status, fatal=True)
    if status == 403:
        reason = _snip(" ".join(p for p in (err_msg, err_extra) if p)) or "no reason given"
        return _Attempt("forbidden",
                        f"OpenRouter refused the request (403, e.g. moderation flagged the input): {reason}. "
                        "Change the prompt or the model.", status=status, fatal=True)
    if status == 429:
        return _Attempt("rate_limited", f"OpenRouter rate-limited the request ({where}){said}.", status=status,
                        retry_after=retry_after)
    if status == 408:
        return _Attempt("timeout", f"OpenRouter timed out the request ({where}){said}.", status=status,
                        retry_after=retry_after)
    if status == 409 or status >= 500:
        return _Attempt("provider_error", f"OpenRouter or the model provider failed ({where}){said}.",
                        status=status, retry_after=retry_after)
    lowered = f"{err_msg} {err_extra}".lower()
    if status == 404 or (status == 400 and any(h in lowered for h in _MODEL_HINTS)
                         and not any(h in lowered for h in _ITEM_HINTS)):
        return _Attempt("bad_request",
                        f"OpenRouter rejected the request for model {model!r} ({status}){said}. "
                        "Check the model id and the request options.", status=status, fatal=True)
    if 400 <= status < 500:
        return _Attempt("bad_request", f"OpenRouter rejected this request ({status}){said}.", status=status,
                        retry=False)
    # 1xx/3xx or anything odd: treat as a provider hiccup.
    return _Attempt("provider_error", f"OpenRouter answered with an unexpected status ({where}){said}.",
                    status=status, retry_after=retry_after)


def _error_text(data: Any, raw: str) -> tuple[str, str]:
    """(message, extra detail such as moderation reasons) from an OpenAI/OpenRouter-style error body."""
    if isinstance(data, dict) and data.get("error") is not None:
        err = data["error"]
        if isinstance(err, dict):
            msg = str(err.get("message") or err.get("code") or err.get("type") or "")
            extra: list[str] = []
            meta = err.get("metadata")
            if isinstance(meta, dict):
                reasons = meta.get("reasons")
                if isinstance(reasons, list) and reasons:
                    extra.append("reasons: " + ", ".join(str(r) for r in reasons))
                raw_meta = meta.get("raw")
                if isinstance(raw_meta, str) and raw_meta:
                    extra.append(raw_meta)
            code = err.get("code")
            if isinstance(code, str) and code not in msg:
                extra.append(code)
            return msg, "; ".join(extra)
        return str(err), ""
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return data["message"], ""
    return raw.strip(), ""


def _int_code(err: Any) -> int | None:
    code = err.get("code") if isinstance(err, dict) else None
    if isinstance(code, bool):
        return None
    if isinstance(code, int):
        return code
    if isinstance(code, str) and code.isdigit():
        return int(code)
    return None


def _retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait from ``Retry-After`` (delta-seconds or an HTTP-date) or ``retry-after-ms``."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(float(ms) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


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


def _as_float(value: Any) -> float:
    try:
        return float(value) if value is not None else 0.0
    except (TypeError, ValueError):
        return 0.0


def _snip(text: str, limit: int = _SNIPPET) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
