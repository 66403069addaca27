"""How a failed Tinker call is classified, for the workers (workers/clients/tinker.py: fail, retry or resume the
job) and the API's chat route (422, or 503 to retry) alike (docs/tinker-sdk-notes.md)."""

from __future__ import annotations

from typing import Literal

import httpx
import tinker

ErrorClass = Literal["user", "transient", "fatal"]

# 4xx statuses that mean the request itself is wrong (bad input, unknown model/checkpoint, too long).
_USER_STATUSES = frozenset({400, 404, 413, 422})
# Statuses worth another try later. 408 and 409 are retried by the SDK itself; 5xx and 429 too.
_TRANSIENT_STATUSES = frozenset({408, 409, 425, 429})


def _classify_one(exc: BaseException) -> ErrorClass | None:
    if isinstance(exc, tinker.RequestFailedError):
        category = str(getattr(exc, "category", "")).lower()
        if category.endswith("user"):
            return "user"
        return "transient"  # Server or Unknown: the service failed the request; a later attempt may not
    if isinstance(exc, tinker.APIConnectionError):  # includes APITimeoutError
        return "transient"
    if isinstance(exc, tinker.APIStatusError):
        status = int(exc.status_code)
        if status >= 500 or status in _TRANSIENT_STATUSES:
            return "transient"
        if status in _USER_STATUSES:
            return "user"
        return "fatal"  # 401/403 (key), 402 (billing): an operator has to act
    if isinstance(exc, tinker.APIResponseValidationError):
        return "fatal"
    name = type(exc).__name__
    if name == "RetryableException":  # tinker.lib.retryable_exception: a promise expired server-side
        return "transient"
    if isinstance(exc, TimeoutError):  # also asyncio/concurrent.futures TimeoutError on 3.11
        return "transient"
    if isinstance(exc, httpx.TransportError):
        return "transient"
    return None


def classify_error(exc: BaseException) -> ErrorClass:
    """``"user"`` (bad input: fail the job, user_error), ``"transient"`` (retry / resume later) or ``"fatal"``.

    Follows ``__cause__`` / ``__context__``, because the SDK wraps some errors (e.g. a ``ValueError`` raised
    from an ``APIStatusError`` while fetching a result, or a ``RuntimeError`` for a poisoned client).
    Anything the SDK did not raise (a bug) is ``"fatal"``.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        found = _classify_one(current)
        if found is not None:
            return found
        current = current.__cause__ or current.__context__
    return "fatal"


def from_tinker(exc: BaseException) -> bool:
    """True when the SDK (or the HTTP layer under it) raised `exc` or something in its cause chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, tinker.TinkerError) or type(current).__module__.startswith("tinker"):
            return True
        current = current.__cause__ or current.__context__
    return False
