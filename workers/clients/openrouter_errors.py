"""What a failed chat-completions call means and what to do next (used by workers/clients/openrouter.py).

``classify`` maps a failed response (an HTTP status, or the code of a 200-with-error-body) to an ``Attempt``:
retry it (429, 408, 409, 5xx), give up on this item (other 4xx), or stop the whole job (the server's key or
account was refused, the model does not exist, moderation refused the input). Failures of the server's own
key (401, 402, a 403 that is not moderation) are the operator's to fix, never the teammate's: their codes are
``OPERATOR_CODES`` and their messages say so, without the key.
"""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime
from typing import Any

import httpx

RETRY_AFTER_MAX = 60.0  # never wait longer than this for one Retry-After
_SNIPPET = 300  # provider text quoted in messages is cut to this many characters

# Phrases that make a 400/404 a configuration problem (the model id or routing), not an item problem.
_MODEL_HINTS = ("model", "no endpoints found", "no allowed providers")
# Phrases that make a model-mentioning 400 an item problem after all ("This model's maximum context length...").
_ITEM_HINTS = ("context length", "context window", "maximum context", "too many tokens", "too long")

# Error codes of calls that failed on the service's side after every retry (see OpenRouterError.outage).
OUTAGE_CODES = ("provider_error", "timeout", "rate_limited")
# Failures an operator must fix (the server's key, its credits, its price table): never the user's error.
OPERATOR_CODES = ("invalid_api_key", "insufficient_credits", "key_forbidden", "cost_unknown")


class OpenRouterError(Exception):
    """A chat call that did not produce a result.

    ``code``: stable machine code (``invalid_api_key``, ``insufficient_credits``, ``key_forbidden``,
    ``forbidden``, ``bad_request``, ``rate_limited``, ``provider_error``, ``timeout``, ``malformed_response``);
    ``message``: a sentence a person can act on (never the API key); ``status``: HTTP status (or the code of a
    200-with-error-body) or None; ``fatal``: the whole job must stop; ``retryable``: worth another try later;
    ``calls``: requests made.
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

    @property
    def operator(self) -> bool:
        """The server's key, account or configuration was refused: an operator must act, not the user."""
        return self.code in OPERATOR_CODES

    def __repr__(self) -> str:
        return (f"OpenRouterError(code={self.code!r}, status={self.status!r}, fatal={self.fatal}, "
                f"retryable={self.retryable}, calls={self.calls}, message={self.message!r})")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (Celery result backends, multiprocessing)
        return (_rebuild_error, (self.code, self.message, self.status, self.fatal, self.retryable, self.calls))


def _rebuild_error(code: str, message: str, status: int | None, fatal: bool, retryable: bool,
                   calls: int) -> OpenRouterError:
    return OpenRouterError(code, message, status=status, fatal=fatal, retryable=retryable, calls=calls)


class Attempt(Exception):
    """Why one attempt failed, and how to go on (internal to the client)."""

    def __init__(self, code: str, message: str, *, status: int | None = None, fatal: bool = False,
                 retry: bool = True, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status
        self.fatal, self.retry, self.retry_after = fatal, retry, retry_after


def classify(status: int, data: Any, raw: str, retry_after: float | None, model: str,
             *, in_body: bool = False) -> Attempt:
    """Map a failed response (an HTTP status, or the code of a 200-with-error-body) to what to do next."""
    err_msg, err_extra = error_text(data, raw)
    where = "an error in a 200 response" if in_body else f"HTTP {status}"
    said = f": {snip(err_msg)}" if err_msg else ""
    if status == 401:
        return Attempt("invalid_api_key",
                       "The server's OpenRouter key was refused (401): ask an operator to check OPENROUTER_API_KEY "
                       "on the workers.", status=status, fatal=True)
    if status == 402:
        return Attempt("insufficient_credits",
                       f"The server's OpenRouter account has no credits left for this request (402{said}): ask an "
                       "operator to add credits (or raise the key's credit limit) at openrouter.ai, then resume "
                       "the job.", status=status, fatal=True)
    if status == 403:
        reason = snip(" ".join(p for p in (err_msg, err_extra) if p)) or "no reason given"
        if _moderation(data):
            return Attempt("forbidden",
                           f"OpenRouter refused the request (403, moderation flagged the input): {reason}. "
                           "Change the prompt or the model.", status=status, fatal=True)
        return Attempt("key_forbidden",
                       f"The server's OpenRouter key is not allowed to make this request for model {model!r} "
                       f"(403: {reason}): ask an operator to check the key's permissions and guardrails, or "
                       "choose another model.", status=status, fatal=True)
    if status == 429:
        return Attempt("rate_limited", f"OpenRouter rate-limited the request ({where}){said}.", status=status,
                       retry_after=retry_after)
    if status == 408:
        return Attempt("timeout", f"OpenRouter timed out the request ({where}){said}.", status=status,
                       retry_after=retry_after)
    if status == 409 or status >= 500:
        return Attempt("provider_error", f"OpenRouter or the model provider failed ({where}){said}.",
                       status=status, retry_after=retry_after)
    lowered = f"{err_msg} {err_extra}".lower()
    if status == 404 or (status == 400 and any(h in lowered for h in _MODEL_HINTS)
                         and not any(h in lowered for h in _ITEM_HINTS)):
        return Attempt("bad_request",
                       f"OpenRouter rejected the request for model {model!r} ({status}){said}. "
                       "Check the model id and the request options.", status=status, fatal=True)
    if 400 <= status < 500:
        return Attempt("bad_request", f"OpenRouter rejected this request ({status}){said}.", status=status,
                       retry=False)
    # 1xx/3xx or anything odd: treat as a provider hiccup.
    return Attempt("provider_error", f"OpenRouter answered with an unexpected status ({where}){said}.",
                   status=status, retry_after=retry_after)


def _moderation(data: Any) -> bool:
    """A 403 that carries moderation details (OpenRouter puts `reasons`/`flagged_input` in error.metadata)."""
    err = data.get("error") if isinstance(data, dict) else None
    meta = err.get("metadata") if isinstance(err, dict) else None
    if isinstance(meta, dict) and (meta.get("reasons") or meta.get("flagged_input")):
        return True
    text = str(err.get("message") or "") if isinstance(err, dict) else ""
    return any(w in text.lower() for w in ("moderation", "flagged"))


def error_text(data: Any, raw: str) -> tuple[str, str]:
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


def int_code(err: Any) -> int | None:
    code = err.get("code") if isinstance(err, dict) else None
    if isinstance(code, bool):
        return None
    if isinstance(code, int):
        return code
    if isinstance(code, str) and code.isdigit():
        return int(code)
    return None


def retry_after(headers: httpx.Headers) -> float | None:
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


def snip(text: str, limit: int = _SNIPPET) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
