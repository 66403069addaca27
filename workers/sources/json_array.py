"""One JSON array of objects, parsed incrementally (ijson's C backend) so memory stays flat whatever the file's
size: each element is built, checked and handed over alone, and the caller stopping (e.g. at `max_examples`)
stops the reading. A file whose first non-blank character is `{` is JSON Lines saved as .json and is read as
such.

Elements are numbered from 1, like `SourceError.line`. An element larger than `max_line_bytes` stops the
reading as soon as that many bytes went by without the element ending. A parse error names the element being
read; a broken file of at most `max_bytes` is parsed once more whole (only on that error path) so the message
can name the line, as JSON parsers do.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import ijson
import orjson

from workers.sources.common import Row, SourceError, one_line
from workers.sources.jsonl import (
    _BOM,
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_LINE_BYTES,
    _depth_exceeds,
    _is_depth_error,
    _json_type,
    _open_binary,
    _orjson_reason,
    _too_deep,
    iter_jsonl,
)

# A broken file up to this size is parsed whole once more to name the line of the error; a larger one is
# named by element, so a crafted broken file cannot make the reader hold it whole.
DEFAULT_MAX_JSON_BYTES = 16_000_000
_BUFFER = 1 << 16


class _ElementTooLarge(Exception):
    pass


class _Metered:
    """A file for ijson that counts what it hands over and refuses to go on once `limit` bytes went by since
    the last element ended (`mark`): an oversized element fails before it is held whole."""

    def __init__(self, f: IO[bytes], limit: int) -> None:
        self._f = f
        self._limit = limit + 2 * _BUFFER  # ijson reads ahead by up to a buffer on each side of an element
        self.read_bytes = 0
        self.mark = 0

    def read(self, size: int = -1) -> bytes:
        if self.read_bytes - self.mark > self._limit:
            raise _ElementTooLarge
        if size == 0:
            return b""  # ijson probes the stream's type with read(0)
        data = self._f.read(size if size > 0 else _BUFFER)
        self.read_bytes += len(data)
        return data


def iter_json_array(
    path: Path,
    *,
    max_bytes: int = DEFAULT_MAX_JSON_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[Row]:
    """Yield `(element_number, object)` from a file holding one JSON array of objects."""
    with _open_binary(path) as f:
        head = f.read(4096)
        start = len(_BOM) if head.startswith(_BOM) else 0
        first = head[start:].lstrip()[:1]
        if first == b"{":
            yield from iter_jsonl(path, max_line_bytes=max_line_bytes, max_depth=max_depth)
            return
        if first != b"[":
            raise _diagnose(f, max_bytes, max_depth, 0)
        f.seek(start)
        source = _Metered(f, max_line_bytes)
        n = 0
        items = ijson.items(source, "item", use_float=True, buf_size=_BUFFER)
        while True:
            try:
                item = next(items)
            except StopIteration:
                return
            except _ElementTooLarge:
                raise SourceError(
                    "line_too_long",
                    f"Element {n + 1} of the JSON array is larger than {max_line_bytes} bytes; shorten or split "
                    "that row, or drop oversized fields.", line=n + 1) from None
            except (ijson.JSONError, UnicodeDecodeError, ValueError) as exc:
                raise _diagnose(f, max_bytes, max_depth, n + 1, exc) from None
            n += 1
            source.mark = source.read_bytes
            if not isinstance(item, dict):
                if _depth_exceeds(item, max_depth):
                    raise _too_deep(n, max_depth, what="Element")
                raise SourceError(
                    "not_an_object",
                    f"Element {n} of the JSON array is {_json_type(item)}, not an object; every element must be an "
                    f"object.",
                    line=n,
                )
            if _depth_exceeds(item, max_depth):
                raise _too_deep(n, max_depth, what="Element")
            yield n, item


def _diagnose(f: IO[bytes], max_bytes: int, max_depth: int, element: int,
              exc: BaseException | None = None) -> SourceError:
    """The error for a file that is not one well-formed array: named by line when the file is small enough to
    parse whole once more, else by the element being read."""
    size = f.seek(0, os.SEEK_END)
    if size <= max_bytes:
        f.seek(0)
        data = f.read()
        if data.startswith(_BOM):
            data = data[len(_BOM):]
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as jexc:
            return _json_file_error(data, jexc, max_depth)
        if not isinstance(value, list):
            return SourceError(
                "bad_file",
                f"The JSON file holds {_json_type(value)}; expected an array of objects like [{{...}}, {{...}}] "
                f"(or JSON Lines).",
            )
    if element == 0:
        return SourceError("bad_file", "The JSON file does not start with an array; expected an array of objects "
                                       "like [{...}, {...}] (or JSON Lines).")
    reason = f" ({one_line(exc, 200)})" if exc is not None else ""
    return SourceError("invalid_json", f"The JSON file is not valid JSON in element {element} of the array"
                                       f"{reason}.", line=element)


def _json_file_error(data: bytes, exc: orjson.JSONDecodeError, max_depth: int) -> SourceError:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as uexc:
        line = data.count(b"\n", 0, uexc.start) + 1
        col = uexc.start - (data.rfind(b"\n", 0, uexc.start) + 1)
        return SourceError(
            "invalid_utf8",
            f"Line {line} of the JSON file is not valid UTF-8 (byte {col} of the line, {uexc.reason}); "
            f"save the file as UTF-8.",
            line=None,
        )
    if _is_depth_error(exc):
        return SourceError(
            "too_deeply_nested",
            f"The JSON file nests arrays/objects too deeply (line {exc.lineno}); rows may nest at most "
            f"{max_depth} levels.",
        )
    return SourceError(
        "invalid_json",
        f"The JSON file is not valid JSON at line {exc.lineno} ({_orjson_reason(exc)}).",
    )
