"""Domain errors. Each carries its HTTP status; one handler in app.main renders problem+json."""

from __future__ import annotations

from typing import Any


class TuneqError(Exception):
    status: int = 400
    code: str = "bad_request"
    title: str = "Bad request"
    retry_after: int | None = None  # seconds, sent as a Retry-After header

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []


class Unauthorized(TuneqError):
    status, code, title = 401, "unauthorized", "Missing or invalid API key"


class Forbidden(TuneqError):
    status, code, title = 403, "forbidden", "Not allowed"


class NotFound(TuneqError):
    status, code, title = 404, "not_found", "Not found"


class Conflict(TuneqError):
    status, code, title = 409, "conflict", "Conflict"


class PayloadTooLarge(TuneqError):
    status, code, title = 413, "payload_too_large", "Request body too large"


class InvalidRequest(TuneqError):
    status, code, title = 422, "invalid_request", "Invalid request"


class ServiceUnavailable(TuneqError):
    status, code, title = 503, "unavailable", "Service unavailable"


class DatabaseUnreachable(ServiceUnavailable):
    """The database is down, restarting or busy: a client should retry, not report a bug."""

    code = "database_unavailable"
    retry_after = 2
    default_detail = ("The database did not answer (down, restarting or busy). Retry shortly; with an "
                      "Idempotency-Key a retried POST /v1/jobs cannot create a second job.")

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.default_detail)
