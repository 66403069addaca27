"""What a pipeline raises to end its job in a particular way."""

from __future__ import annotations

from typing import Any


class JobFailed(Exception):
    """Fail the job with a stable code and a message a person can act on."""

    def __init__(self, code: str, message: str, *, user_error: bool = True,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.user_error, self.details = code, message, user_error, details or {}


class RetryJob(Exception):
    """A transient failure (a service was down): try the job again, up to max_attempts."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class JobCancelled(Exception):
    """Raised by ctx.check() when a cancel was requested; pipelines may save work, then re-raise."""


class Preempted(Exception):
    """The infrastructure interrupts the job (the worker shuts down, the database went away): hand it back
    so it resumes elsewhere without spending an attempt. `reason` is machine-readable."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message
