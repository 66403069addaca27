"""Rows of uploaded files: JSON Lines, one JSON array, Parquet and CSV (see workers/sources/__init__.py)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from workers.sources.common import Row, SourceError, one_line
from workers.sources.json_array import DEFAULT_MAX_JSON_BYTES, iter_json_array
from workers.sources.jsonl import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_LINE_BYTES,
    _iter_raw_lines,
    _open_binary,
    iter_jsonl,
)

FILE_FORMATS = frozenset({"jsonl", "json", "parquet", "csv"})


def iter_file_rows(
    path: Path,
    fmt: str,
    *,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_json_bytes: int = DEFAULT_MAX_JSON_BYTES,
) -> Iterator[Row]:
    """Yield `(number, row)` from an uploaded file; `fmt` is one of jsonl, json, parquet, csv."""
    kind = fmt.lower().strip() if isinstance(fmt, str) else ""
    if kind not in FILE_FORMATS:
        raise SourceError(
            "unsupported_format",
            f"File format {fmt!r} is not supported; use one of: {', '.join(sorted(FILE_FORMATS))}.",
        )
    if kind == "jsonl":
        return iter_jsonl(path, max_line_bytes=max_line_bytes, max_depth=max_depth)
    if kind == "json":
        return iter_json_array(path, max_bytes=max_json_bytes, max_depth=max_depth,
                               max_line_bytes=max_line_bytes)
    if kind == "parquet":
        return iter_parquet(path)
    return iter_csv(path, max_line_chars=max_line_bytes)


def iter_parquet(path: Path, *, batch_size: int = 1024) -> Iterator[Row]:
    """Yield `(row_number, row)` from a Parquet file, one record batch at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    errors = (pa.ArrowException, OSError, ValueError)
    if not Path(path).exists():
        raise SourceError("file_not_found", "The source file does not exist (it may have been deleted); "
                                            "upload it again.")
    try:
        pf = pq.ParquetFile(path)
    except errors as exc:
        raise SourceError("bad_file", f"The file is not a readable Parquet file ({one_line(exc)}).") from None
    n = 0
    try:
        batches = pf.iter_batches(batch_size=batch_size)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except errors as exc:
                raise SourceError(
                    "bad_file",
                    f"The Parquet file is damaged near row {n + 1} ({one_line(exc)}); export it again.",
                    line=n + 1,
                ) from None
            for row in batch.to_pylist():
                n += 1
                yield n, row
    finally:
        pf.close()


def _bounded_text_lines(f: IO[str], max_chars: int, counter: list[int]) -> Iterator[str]:
    """Physical lines of a text stream, each read with a size bound; counter[0] is the last line number."""
    while True:
        piece = f.readline(max_chars + 2)
        if not piece:
            return
        counter[0] += 1
        if len(piece.rstrip("\r\n")) > max_chars:
            raise SourceError(
                "line_too_long",
                f"Line {counter[0]} is longer than {max_chars} characters; shorten or split that row.",
                line=counter[0],
            )
        yield piece


def iter_csv(path: Path, *, max_line_chars: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[Row]:
    """Yield `(line_number, row)` from a CSV file with a header line; values stay strings.

    Decoded strictly as UTF-8 (a leading BOM is allowed). Rows with fewer fields than the header get "" for
    the missing ones; extra non-empty fields, duplicate header names and fields over the csv module's field
    size limit are errors naming the line. A record spanning several lines (quoted newlines) is numbered by
    its first line."""
    try:
        f = open(path, encoding="utf-8-sig", errors="strict", newline="")  # noqa: SIM115
    except FileNotFoundError:
        raise SourceError("file_not_found", "The source file does not exist (it may have been deleted); "
                                            "upload it again.") from None
    except OSError as exc:
        raise SourceError("bad_file", f"The source file cannot be opened ({exc.strerror or exc}).") from None
    counter = [0]
    with f:
        reader = csv.reader(_bounded_text_lines(f, max_line_chars, counter))
        header: list[str] | None = None
        while True:
            start = counter[0] + 1
            try:
                record = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError:
                raise _csv_utf8_error(path, max_line_chars) from None
            except csv.Error as exc:
                raise SourceError(
                    "bad_file",
                    f"Line {counter[0]} of the CSV file cannot be parsed ({exc}); fix the quoting, or put "
                    f"large texts in a JSON Lines file instead.",
                    line=counter[0],
                ) from None
            if not record:
                continue
            if header is None:
                header = record
                seen: set[str] = set()
                for name in header:
                    if name in seen:
                        raise SourceError("bad_file", f"The CSV header (line {start}) names column {name!r} "
                                                      f"twice; give every column a distinct name.", line=start)
                    seen.add(name)
                continue
            if len(record) > len(header):
                if any(v.strip() for v in record[len(header):]):
                    raise SourceError(
                        "bad_file",
                        f"Line {start} has {len(record)} fields but the header has {len(header)}; "
                        f"quote fields that contain commas.",
                        line=start,
                    )
                record = record[: len(header)]
            elif len(record) < len(header):
                record = record + [""] * (len(header) - len(record))
            yield start, dict(zip(header, record, strict=True))


def _csv_utf8_error(path: Path, max_line_chars: int) -> SourceError:
    """The text decoder reads ahead, so find the first bad line by scanning the bytes again."""
    with _open_binary(path) as f:
        for line_no, line in _iter_raw_lines(f, 4 * max_line_chars + 4):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return SourceError(
                    "invalid_utf8",
                    f"Line {line_no} is not valid UTF-8 (byte {exc.start} of the line, {exc.reason}); "
                    f"save the file as UTF-8.",
                    line=line_no,
                )
    return SourceError("invalid_utf8", "The file is not valid UTF-8; save it as UTF-8.")
