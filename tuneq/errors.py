"""The client's exceptions: one base, so a caller can catch everything tuneq raises with one clause."""

from __future__ import annotations

from typing import Any


class TuneqClientError(Exception):
    """Anything the tuneq client raises on purpose."""


class ServiceUnreachable(TuneqClientError):
    """The service could not be reached (or kept answering 503) after the client's bounded retries."""


class ApiError(TuneqClientError):
    """The service answered with an error: the fields of its problem+json body (RFC 9457)."""

    def __init__(self, status: int, *, code: str = "", title: str = "", detail: str = "",
                 errors: list[dict[str, Any]] | None = None, retry_after: float | None = None) -> None:
        self.status, self.code, self.title, self.detail = status, code, title, detail
        self.errors = errors or []
        self.retry_after = retry_after
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """One line a person can act on: the detail, then each field error as `loc: msg`."""
        text = self.detail or self.title or f"HTTP {self.status}"
        fields = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', []))}: {e.get('msg', '')}" for e in self.errors)
        return f"{text} ({fields})" if fields and fields not in text else text

    @classmethod
    def from_body(cls, status: int, body: Any, retry_after: float | None = None) -> ApiError:
        if not isinstance(body, dict):
            return cls(status, detail=str(body)[:500] if body else "", retry_after=retry_after)
        return cls(status, code=str(body.get("code", "")), title=str(body.get("title", "")),
                   detail=str(body.get("detail", "")), errors=list(body.get("errors") or []), retry_after=retry_after)
