"""Logging for the API and the workers: one JSON object per line (or a readable line on a terminal), with the
job and request a line is about, and no secrets (docs/architecture.md, "Logs and metrics").

Every process calls `configure_logging` once at start. The standard library's loggers (ours, uvicorn's,
Celery's) go through structlog's ProcessorFormatter, so `logging.getLogger(...)` lines are JSON too. Context
bound with `bind_job` / `bind_request` (contextvars) lands on every line written while it is bound.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import structlog
from structlog.contextvars import bind_contextvars, clear_contextvars
from structlog.typing import EventDict, Processor

from app.settings import Settings

REDACTED = "[redacted]"
# Key shapes masked wherever they appear: an Authorization value, OpenRouter, Tinker and Hugging Face keys, and
# the secret part of a tuneq API key (its prefix is public and kept, so a line still says which key it was).
KEY_SHAPES = re.compile(
    r"(?P<bearer>\b[Bb]earer\s+)[^\s\"',;]+"
    r"|\bsk-or-[A-Za-z0-9_\-]+"
    r"|\btml-[A-Za-z0-9_\-]+"
    r"|\bhf_[A-Za-z0-9]{8,}"
    r"|(?P<tuneq>\btq_[A-Za-z0-9]+_)[A-Za-z0-9_\-]+"
)
# Context names a stdlib call may pass as `extra=` (e.g. a heartbeat thread that serves several jobs).
CONTEXT_KEYS = ("job_id", "attempt", "team", "kind", "request_id")
_STDLIB_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({})))


def _mask(match: re.Match[str]) -> str:
    return (match.group("bearer") or match.group("tuneq") or "") + REDACTED


class Redactor:
    """Masks key shapes and the configured secrets' exact values in the event and every field, nested or not."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is masked whole; short values would mask noise.
        self.secrets = sorted({s for s in secrets if len(s) >= 8}, key=len, reverse=True)

    def text(self, value: str) -> str:
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return KEY_SHAPES.sub(_mask, value)

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple, set)):
            return [self.value(v) for v in value]
        if isinstance(value, (int, float, bool)) or value is None:
            return value
        return self.text(str(value))  # anything else is rendered as text anyway: mask that text

    def __call__(self, _: Any, __: str, event: EventDict) -> EventDict:
        return {key: self.value(value) for key, value in event.items()}


def _extras(_: Any, __: str, event: EventDict) -> EventDict:
    """Context passed to a stdlib call as `extra={"job_id": ...}`, as fields of the line."""
    record = event.get("_record")
    if record is not None:
        for key in CONTEXT_KEYS:
            if key in vars(record) and key not in _STDLIB_ATTRIBUTES:
                event.setdefault(key, getattr(record, key))
    return event


def secret_values(settings: Settings) -> list[str]:
    values = [settings.tinker_api_key, settings.openrouter_api_key, settings.hf_token, settings.metrics_token,
              settings.webhook_secret]
    return [v.get_secret_value() for v in values if v is not None]


def wants_console(log_format: str, stream: Any) -> bool:
    if log_format == "auto":
        isatty = getattr(stream, "isatty", None)
        return bool(isatty and isatty())
    return log_format == "console"


SHARED: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def make_formatter(settings: Settings, *, console: bool) -> logging.Formatter:
    """The one formatter every line goes through: context, redaction, then JSON or a readable line."""
    renderer: Processor = (structlog.dev.ConsoleRenderer(colors=True) if console
                           else structlog.processors.JSONRenderer())
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*SHARED, _extras],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,  # the traceback becomes a field, so it is redacted too
            Redactor(secret_values(settings)),
            renderer,
        ],
    )


def configure_logging(settings: Settings, *, level: str | int | None = None, stream: Any = None) -> None:
    """Send every log line of this process, structlog's and the standard library's, through one formatter."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(make_formatter(settings, console=wants_console(settings.log_format, stream)))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level if level is not None else settings.log_level.upper())
    # uvicorn installs its own handlers before the app starts: hand their lines to ours (an access log that
    # was turned off, which has none, stays off).
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        if logger.handlers:
            logger.handlers.clear()
            logger.propagate = True
    structlog.configure(
        processors=[*SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def bind_job(*, job_id: str, attempt: int | None = None, team: str | None = None, kind: str | None = None) -> None:
    """Every line this worker writes from here on is about this job (until `clear_context`)."""
    known = {"attempt": attempt, "team": team, "kind": kind}
    bind_contextvars(job_id=job_id, **{k: v for k, v in known.items() if v is not None})


def clear_context() -> None:
    clear_contextvars()
