"""What every source reader shares: the row type, the error, and how exception text is shortened."""

from __future__ import annotations

from typing import Any

Row = tuple[int, dict[str, Any]]


class SourceError(Exception):
    """A source that cannot be read.

    `code` is stable and machine-readable (see workers/sources/__init__.py), `message` is a sentence a person can act
    on, `line` is the row/line number (same numbering as the rows yielded) when known, and `retryable` is True
    only for failures that may pass on their own (the Hub could not be reached over the network).
    Picklable: everything goes through `Exception.args`.
    """

    def __init__(self, code: str, message: str, line: int | None = None, retryable: bool = False) -> None:
        super().__init__(code, message, line, retryable)
        self.code = code
        self.message = message
        self.line = line
        self.retryable = retryable

    def __str__(self) -> str:
        return self.message


def one_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first if len(first) <= limit else first[: limit - 3] + "..."
