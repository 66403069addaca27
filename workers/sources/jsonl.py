"""JSON Lines: one object per line, read in fixed-size chunks with a bound on each line."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from workers.sources.common import Row, SourceError

DEFAULT_MAX_LINE_BYTES = 8_000_000
DEFAULT_MAX_DEPTH = 64
_CHUNK = 1 << 20
_BOM = b"\xef\xbb\xbf"


def _open_binary(path: Path) -> IO[bytes]:
    try:
        return open(path, "rb")  # noqa: SIM115 - closed by the calling generator
    except FileNotFoundError:
        raise SourceError("file_not_found", "The source file does not exist (it may have been deleted); "
                                            "upload it again.") from None
    except IsADirectoryError:
        raise SourceError("bad_file", "The source is a directory, not a file.") from None
    except OSError as exc:
        raise SourceError("bad_file", f"The source file cannot be opened ({exc.strerror or exc}).") from None


def _iter_raw_lines(f: IO[bytes], max_line_bytes: int) -> Iterator[tuple[int, bytes]]:
    """Split a binary stream on b"\\n" reading fixed-size chunks; never holds more than one line plus one
    chunk. Raises `line_too_long` as soon as the line being assembled passes `max_line_bytes` (the limit
    counts the bytes before the newline)."""
    line_no = 0
    pending = bytearray()

    def too_long(n: int) -> SourceError:
        return SourceError(
            "line_too_long",
            f"Line {n} is longer than {max_line_bytes} bytes. Each JSON Lines row must fit on one line "
            f"under that limit: shorten or split the row, or drop oversized fields.",
            line=n,
        )

    while True:
        chunk = f.read(_CHUNK)
        if not chunk:
            break
        parts = chunk.split(b"\n")
        if len(parts) == 1:
            if len(pending) + len(chunk) > max_line_bytes:
                raise too_long(line_no + 1)
            pending += chunk
            continue
        first = parts[0]
        line_no += 1
        if len(pending) + len(first) > max_line_bytes:
            raise too_long(line_no)
        if pending:
            pending += first
            yield line_no, bytes(pending)
            pending = bytearray()
        else:
            yield line_no, first
        for i in range(1, len(parts) - 1):
            part = parts[i]
            line_no += 1
            if len(part) > max_line_bytes:
                raise too_long(line_no)
            yield line_no, part
        last = parts[-1]
        if len(last) > max_line_bytes:
            raise too_long(line_no + 1)
        pending = bytearray(last)
    if pending:
        yield line_no + 1, bytes(pending)


_JSON_TYPE = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
              type(None): "null", dict: "an object"}


def _json_type(value: Any) -> str:
    return _JSON_TYPE.get(type(value), type(value).__name__)


def _depth_exceeds(value: Any, max_depth: int) -> bool:
    """True when containers nest deeper than `max_depth` (the value itself is depth 1). Iterative and stops
    as soon as the limit is passed."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return True
        children: Iterable[Any]
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def _orjson_reason(exc: orjson.JSONDecodeError) -> str:
    # orjson appends ": line L column C (char P)"; keep the column, the line number is ours.
    return str(exc).split(": line ", 1)[0] + (f" at column {exc.colno}" if exc.colno else "")


def _is_depth_error(exc: orjson.JSONDecodeError) -> bool:
    text = str(exc).lower()
    return "depth" in text or "recursion" in text


def iter_jsonl(
    path: Path, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, max_depth: int = DEFAULT_MAX_DEPTH
) -> Iterator[Row]:
    """Yield `(line_number, object)` for each non-blank line of a JSON Lines file."""
    with _open_binary(path) as f:
        for line_no, line in _iter_raw_lines(f, max_line_bytes):
            if line_no == 1 and line.startswith(_BOM):
                line = line[len(_BOM):]
            if not line or line.isspace():
                continue
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise _line_error(line, line_no, exc, max_depth) from None
            if not isinstance(value, dict):
                raise SourceError(
                    "not_an_object",
                    f"Line {line_no} holds {_json_type(value)}, not a JSON object; each line must be one "
                    f"object such as {{\"messages\": [...]}}.",
                    line=line_no,
                )
            if (line.count(b"{") + line.count(b"[") > max_depth) and _depth_exceeds(value, max_depth):
                raise _too_deep(line_no, max_depth)
            yield line_no, value


def _too_deep(line_no: int, max_depth: int, what: str = "Line") -> SourceError:
    return SourceError(
        "too_deeply_nested",
        f"{what} {line_no} nests arrays/objects deeper than {max_depth} levels; flatten that row.",
        line=line_no,
    )


def _line_error(line: bytes, line_no: int, exc: orjson.JSONDecodeError, max_depth: int) -> SourceError:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as uexc:
        return SourceError(
            "invalid_utf8",
            f"Line {line_no} is not valid UTF-8 (byte {uexc.start} of the line, {uexc.reason}); "
            f"save the file as UTF-8.",
            line=line_no,
        )
    if _is_depth_error(exc):
        return _too_deep(line_no, max_depth)
    return SourceError(
        "invalid_json",
        f"Line {line_no} is not valid JSON ({_orjson_reason(exc)}); each line must be one complete JSON object.",
        line=line_no,
    )
