"""Read rows from a dataset job's source: an uploaded file, a Hugging Face Hub dataset, or a local directory
shaped like a Hub dataset repository.

Every reader is a generator of `Row = (number, row)` pairs, streaming and memory-flat (no reader ever lists a
whole source). What `number` means, per source — it is also what `SourceError.line` holds:

- JSONL and CSV: the 1-based physical line of the file where the row starts (blank lines are skipped but
  counted; the CSV header is line 1).
- JSON (one array of objects): the 1-based position of the element in the array.
- Parquet, Hub and local datasets: the 1-based row number in the file / split.

A source that cannot be read raises `SourceError` with a stable `code` and a `message` a person can act on.
Messages never carry a stack trace, a token or a server-side file path (upload errors name lines, not paths).

Errors in the arguments (`unsupported_format`, `bad_name`, and for local directories `dataset_not_found`,
`bad_config`, `bad_split`) are raised by the call itself; everything else while iterating. `retryable` is True
only when the Hub could not be reached over the network (not in offline mode) or answered 429/5xx.

Codes: `unsupported_format`, `file_not_found`, `file_too_large`, `bad_file`, `invalid_utf8`, `line_too_long`,
`too_deeply_nested`, `not_an_object`, `invalid_json`, `bad_name`, `hub_unreachable`, `dataset_not_found`,
`dataset_gated`, `bad_revision`, `bad_config`, `bad_split`, `no_data_files`.

Hub notes (datasets 5 / huggingface_hub 1.x, measured on a machine without network):

- Both libraries read `HF_HUB_OFFLINE` once, at import. With it set before import, `load_dataset` fails in ~2 ms
  with `ConnectionError("Couldn't reach 'org/name' on the Hub (OfflineModeIsEnabled)")`; we map that. If the
  variable is set only after import (the libraries would not notice and go to the network), we honour it
  ourselves and fail at once without touching the network.
- With no network and no offline flag, `load_dataset` retries the README download five times with backoff
  (1+2+4+8+8 s) and fails after ~23 s. To bound that, `iter_hub_rows` first sends one HEAD request to the Hub
  endpoint through huggingface_hub's own HTTP session (same proxies/TLS settings) on a helper thread, with a
  `connect_timeout` (default 10 s) that also bounds DNS; no answer -> `hub_unreachable` (retryable) at once
  (here: DNS fails in ~2 ms; a silent endpoint costs `connect_timeout`). Any HTTP answer counts as reachable.
- Each streaming load gets a throw-away `cache_dir` (see `_scratch_cache`).
- Hub names are loaded as `hf://datasets/<name>` so a name can never resolve to a local directory or to one of
  the `datasets` packaged builders (`json`, `csv`, ...), and names are validated as repo ids first.
"""

from __future__ import annotations

import ast
import csv
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import orjson

__all__ = [
    "Row",
    "SourceError",
    "iter_file_rows",
    "iter_jsonl",
    "iter_json_array",
    "iter_parquet",
    "iter_csv",
    "iter_hub_rows",
    "iter_local_dataset_rows",
    "FILE_FORMATS",
]

Row = tuple[int, dict[str, Any]]

FILE_FORMATS = frozenset({"jsonl", "json", "parquet", "csv"})
DEFAULT_MAX_LINE_BYTES = 8_000_000
DEFAULT_MAX_DEPTH = 64
DEFAULT_MAX_JSON_BYTES = 200_000_000
_CHUNK = 1 << 20
_BOM = b"\xef\xbb\xbf"


class SourceError(Exception):
    """A source that cannot be read.

    `code` is stable and machine-readable (see the module docstring), `message` is a sentence a person can act
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


# --------------------------------------------------------------------------------------------------------------
# Uploaded files
# --------------------------------------------------------------------------------------------------------------


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


def iter_json_array(
    path: Path,
    *,
    max_bytes: int = DEFAULT_MAX_JSON_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[Row]:
    """Yield `(element_number, object)` from a file holding one JSON array of objects.

    The file is parsed whole, so it must be at most `max_bytes`. A file whose first non-blank character is
    `{` is JSON Lines saved as .json: it is read with `iter_jsonl` instead (streaming, no size cap)."""
    with _open_binary(path) as f:
        head = f.read(4096).lstrip(_BOM).lstrip()
        if head.startswith(b"{"):
            yield from iter_jsonl(path, max_line_bytes=max_line_bytes, max_depth=max_depth)
            return
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size > max_bytes:
            raise SourceError(
                "file_too_large",
                f"The JSON file is {size} bytes; a single JSON array is limited to {max_bytes} bytes because it "
                f"must be loaded whole. Convert it to JSON Lines (one object per line) and upload that.",
            )
        f.seek(0)
        data = f.read()
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise _json_file_error(data, exc, max_depth) from None
    del data
    if not isinstance(value, list):
        raise SourceError(
            "bad_file",
            f"The JSON file holds {_json_type(value)}; expected an array of objects like [{{...}}, {{...}}] "
            f"(or JSON Lines).",
        )
    value.reverse()  # pop from the end: yields in order and frees each element once the caller drops it
    n = 0
    while value:
        item = value.pop()
        n += 1
        if not isinstance(item, dict):
            raise SourceError(
                "not_an_object",
                f"Element {n} of the JSON array is {_json_type(item)}, not an object; every element must be an "
                f"object.",
                line=n,
            )
        if _depth_exceeds(item, max_depth):
            raise _too_deep(n, max_depth, what="Element")
        yield n, item


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
        raise SourceError("bad_file", f"The file is not a readable Parquet file ({_one_line(exc)}).") from None
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
                    f"The Parquet file is damaged near row {n + 1} ({_one_line(exc)}); export it again.",
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


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first if len(first) <= limit else first[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------------------------
# Hugging Face Hub
# --------------------------------------------------------------------------------------------------------------

_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
_TRUE = {"1", "ON", "YES", "TRUE"}
_TOKEN_RE = re.compile(r"\bhf_[A-Za-z0-9]{8,}")
_BEARER_RE = re.compile(r"(?i)(bearer\s+)\S+")
_CONNECTION_NAMES = {"ConnectError", "ConnectTimeout", "ReadTimeout", "TimeoutException", "NetworkError",
                     "OfflineModeIsEnabled", "RemoteProtocolError", "ProxyError", "PoolTimeout"}


def _redact(text: str, token: str | None) -> str:
    if token and len(token) >= 4:
        text = text.replace(token, "***")
    text = _TOKEN_RE.sub("hf_***", text)
    return _BEARER_RE.sub(r"\1***", text)


def _env_offline() -> bool:
    """The offline switch as `datasets` would compute it from the environment right now."""
    ds = os.environ.get("HF_DATASETS_OFFLINE")
    if ds is not None:
        return ds.upper() in _TRUE
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in _TRUE


def _validate_hub_name(name: str) -> None:
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    parts = name.split("/") if isinstance(name, str) else []
    ok = (
        1 <= len(parts) <= 2
        and all(_REPO_PART.match(p) for p in parts)
        and ".." not in name
        and "--" not in name
        and not name.endswith(".git")
        and not (len(parts) == 1 and name in _PACKAGED_DATASETS_MODULES)
    )
    if not ok:
        raise SourceError(
            "bad_name",
            f"{name!r} is not a Hugging Face dataset name; use the repo id shown on the dataset page, "
            f"like 'org/name'.",
        )


def _unreachable(what: str, detail: str, *, retryable: bool) -> SourceError:
    return SourceError(
        "hub_unreachable",
        f"Could not reach the Hugging Face Hub to load dataset {what} (offline or network error: {detail}). "
        f"Check the name and network, or upload the file with POST /v1/files.",
        retryable=retryable,
    )


def _probe_hub(endpoint: str, timeout: float) -> str | None:
    """One HEAD request to the Hub endpoint on a helper thread (DNS lookups ignore socket timeouts).
    Returns None when the Hub answered (any HTTP status), else a short reason."""
    from huggingface_hub.utils import get_session

    outcome: list[str | None] = []

    def run() -> None:
        try:
            get_session().head(endpoint, timeout=timeout)
            outcome.append(None)
        except Exception as exc:  # any failure to get an answer means "unreachable"
            outcome.append(f"{type(exc).__name__}: {_one_line(exc, 200)}")

    thread = threading.Thread(target=run, name="tuneq-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if thread.is_alive():
        return f"no answer from {endpoint} within {timeout:g} s"
    return outcome[0] if outcome else "unknown error"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _available(text: str) -> str | None:
    m = re.search(r"(?:Available splits|Available|available configs): (\[[^\]]*\])", text)
    if not m:
        return None
    try:
        items = ast.literal_eval(m.group(1))
    except (ValueError, SyntaxError):
        return None
    return ", ".join(str(i) for i in items) if isinstance(items, list) else None


def _map_datasets_error(exc: BaseException, what: str, *, split: str, config: str | None,
                        revision: str | None, token: str | None, hub: bool) -> SourceError:
    """Turn an exception from `datasets`/`huggingface_hub` into a SourceError naming `what` (the dataset)."""
    from datasets.exceptions import DataFilesNotFoundError, DatasetNotFoundError

    if isinstance(exc, SourceError):
        return exc
    text = _redact(str(exc), token)
    for link in _chain(exc):
        cls = type(link).__name__
        if cls == "OfflineModeIsEnabled" or "OfflineModeIsEnabled" in str(link):
            return _unreachable(what, "offline mode is enabled (HF_HUB_OFFLINE)", retryable=False)
        if cls in _CONNECTION_NAMES or (isinstance(link, ConnectionError) and "Couldn't reach" in str(link)):
            return _unreachable(what, _redact(_one_line(link, 200), token), retryable=True)
        if cls == "GatedRepoError" or (isinstance(link, DatasetNotFoundError) and "gated" in str(link)):
            return SourceError(
                "dataset_gated",
                f"Dataset {what} is gated or private on the Hub: accept its terms on the dataset page and "
                f"submit the job with a token that has access.",
            )
        if cls == "RevisionNotFoundError" or (isinstance(link, DatasetNotFoundError)
                                              and "Revision" in str(link)):
            return SourceError("bad_revision",
                               f"Revision {revision!r} does not exist for dataset {what}; use a branch, tag "
                               f"or commit of that dataset.")
        if cls == "RepositoryNotFoundError" or isinstance(link, DatasetNotFoundError):
            return SourceError(
                "dataset_not_found",
                f"Dataset {what} was not found on the Hub (or is private and the token cannot see it); "
                f"check the name.",
            )
        if isinstance(link, DataFilesNotFoundError) or cls == "EmptyDatasetError":
            return SourceError("no_data_files", f"Dataset {what} has no data files that can be read "
                                                f"(parquet, jsonl, json, csv, ...).")
        if hub and isinstance(link, FileNotFoundError):  # its text may hold a server-side path: not shown
            return SourceError("dataset_not_found", f"Dataset {what} was not found on the Hub; check the name.")
        status = getattr(getattr(link, "response", None), "status_code", None)
        if cls.startswith("HfHubHTTPError") or status is not None:
            if status in (401, 403):
                return SourceError("dataset_gated", f"Access to dataset {what} was refused (HTTP {status}); "
                                                    f"submit the job with a token that has access.")
            if status == 404:
                return SourceError("dataset_not_found", f"Dataset {what} was not found on the Hub (HTTP 404); "
                                                        f"check the name.")
            if status is not None and (status >= 500 or status == 429):
                return SourceError("hub_unreachable",
                                   f"The Hugging Face Hub answered HTTP {status} while loading dataset {what}; "
                                   f"try again later.", retryable=True)
    if isinstance(exc, ValueError):
        if text.startswith("Bad split") or "Unknown split" in text:
            avail = _available(text)
            return SourceError(
                "bad_split",
                f"Dataset {what} has no split {split!r}"
                + (f"; available splits: {avail}." if avail else ".")
                + " Pick one of them.",
            )
        if "BuilderConfig" in text or "Config name is missing" in text:
            avail = _available(text)
            head = (f"Dataset {what} has no config {config!r}" if config
                    else f"Dataset {what} has several configs and none was chosen")
            return SourceError("bad_config", head + (f"; available configs: {avail}." if avail else ".")
                               + " Set `config` to one of them.")
    source = "the Hub" if hub else "disk"
    return SourceError("bad_file", f"Could not read dataset {what} from {source} "
                                   f"({type(exc).__name__}: {_redact(_one_line(exc), token)}).")


def _scratch_cache() -> tempfile.TemporaryDirectory[str]:
    """A throw-away `cache_dir` for one streaming load: `datasets` writes a lock file per builder and data-files
    hash into its cache even when streaming; this keeps HF_DATASETS_CACHE from filling with them."""
    return tempfile.TemporaryDirectory(prefix="tuneq-hf-", ignore_cleanup_errors=True)


def _iterate_mapped(ds: Iterable[dict[str, Any]], start: int,
                    mapper: Callable[[BaseException], SourceError]) -> Iterator[Row]:
    n = start
    it = iter(ds)
    while True:
        try:
            row = next(it)
        except StopIteration:
            return
        except Exception as exc:
            err = mapper(exc)
            if n > start and err.code == "bad_file":
                # Readers parse whole blocks, so the failing row is not known exactly: say how far we got.
                err = SourceError(err.code, f"{err.message} The error came after row {n}.", None, err.retryable)
            raise err from None
        n += 1
        yield n, row


def iter_hub_rows(
    name: str,
    *,
    config: str | None = None,
    split: str = "train",
    revision: str | None = None,
    token: str | None = None,
    data_dir: str | None = None,
    data_files: str | Sequence[str] | Mapping[str, str | Sequence[str]] | None = None,
    connect_timeout: float = 10.0,
) -> Iterator[Row]:
    """Stream `(row_number, row)` from a Hub dataset with `datasets.load_dataset(..., streaming=True)`.

    Nothing touches the network until the first `next()`. Failures become SourceErrors naming the dataset;
    see the module docstring for what happens offline."""
    _validate_hub_name(name)
    what = f"'{name}'"

    def mapper(exc: BaseException) -> SourceError:
        return _map_datasets_error(exc, what, split=split, config=config, revision=revision, token=token,
                                   hub=True)

    def gen() -> Iterator[Row]:
        import datasets

        lib_offline = bool(datasets.config.HF_HUB_OFFLINE)
        if _env_offline() and not lib_offline:
            # Set after `datasets` was imported: the libraries would not see it. Honour it without the network.
            raise _unreachable(what, "offline mode is enabled (HF_HUB_OFFLINE)", retryable=False)
        if not lib_offline:
            reason = _probe_hub(str(datasets.config.HF_ENDPOINT), connect_timeout)
            if reason is not None:
                raise _unreachable(what, _redact(reason, token), retryable=True)
        kwargs: dict[str, Any] = {"split": split, "streaming": True}
        if revision:
            kwargs["revision"] = revision
        if token:
            kwargs["token"] = token
        if data_dir:
            kwargs["data_dir"] = data_dir
        if data_files:
            kwargs["data_files"] = data_files
        with _scratch_cache() as cache_dir:
            try:
                ds = datasets.load_dataset(f"hf://datasets/{name}", config, cache_dir=cache_dir, **kwargs)
            except Exception as exc:
                raise mapper(exc) from None
            yield from _iterate_mapped(ds, 0, mapper)

    return gen()


# --------------------------------------------------------------------------------------------------------------
# Local directories shaped like Hub dataset repositories
# --------------------------------------------------------------------------------------------------------------

# Same keywords as `datasets` uses to infer splits from file and directory names.
_SPLIT_KEYWORDS = {
    "train": "train", "training": "train",
    "validation": "validation", "valid": "validation", "dev": "validation", "val": "validation",
    "test": "test", "testing": "test", "eval": "test", "evaluation": "test",
}
_SPLIT_ORDER = ("train", "validation", "test")
_TOKEN_SPLIT = re.compile(r"[-._ 0-9]+")
_SHARDED = re.compile(r"^(\w+(?:\.\w+)*)-\d{5}-of-\d{5}")
# File extension -> (datasets packaged builder, builder kwargs)
_LOCAL_BUILDERS: dict[str, tuple[str, dict[str, Any]]] = {
    ".parquet": ("parquet", {}),
    ".jsonl": ("json", {}),
    ".json": ("json", {}),
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"sep": "\t"}),
}
_IGNORED_FILES = {"readme.md", "config.json", "dataset_info.json", "dataset_infos.json", "dataset_dict.json"}
_CONFIG_NAME = re.compile(r"^[A-Za-z0-9][\w.+-]*$")


def _builder_for(p: Path) -> tuple[str, dict[str, Any]] | None:
    return _LOCAL_BUILDERS.get(p.suffix.lower())


def _data_files_under(root: Path) -> list[Path]:
    """Supported data files under root (recursive), skipping hidden/dunder entries; sorted by relative path."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__")))
        for fn in filenames:
            if fn.startswith((".", "__")) or fn.lower() in _IGNORED_FILES:
                continue
            p = Path(dirpath, fn)
            if _builder_for(p) is not None:
                out.append(p)
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def _keyword_split(name: str) -> str | None:
    for tok in _TOKEN_SPLIT.split(name.lower()):
        if tok in _SPLIT_KEYWORDS:
            return _SPLIT_KEYWORDS[tok]
    return None


def _split_of(rel: Path) -> str | None:
    """Sharded name (`<split>-00000-of-00001.ext`) > split keyword in the file name > keyword in a directory."""
    m = _SHARDED.match(rel.name)
    if m:
        return _SPLIT_KEYWORDS.get(m.group(1).lower(), m.group(1))
    stem = rel.name[: -len(rel.suffix)] if rel.suffix else rel.name
    found = _keyword_split(stem)
    if found:
        return found
    for part in rel.parts[:-1]:
        found = _keyword_split(part)
        if found:
            return found
    return None


def _split_files(root: Path, files: list[Path]) -> dict[str, list[Path]]:
    assigned: dict[str, list[Path]] = {}
    unassigned: list[Path] = []
    for p in files:
        split = _split_of(p.relative_to(root))
        if split is None:
            unassigned.append(p)
        else:
            assigned.setdefault(split, []).append(p)
    if not assigned and unassigned:
        assigned["train"] = unassigned  # like `datasets`: files with no split in their name are all "train"
    ordered = [s for s in _SPLIT_ORDER if s in assigned] + sorted(s for s in assigned if s not in _SPLIT_ORDER)
    return {s: assigned[s] for s in ordered}


def _has_yaml_configs(path: Path) -> bool:
    readme = path / "README.md"
    if not readme.is_file():
        return False
    try:
        with open(readme, encoding="utf-8", errors="replace") as f:
            if f.readline().strip() != "---":
                return False
            for _ in range(10_000):
                line = f.readline()
                if not line or line.strip() == "---":
                    return False
                if line.startswith("configs:"):
                    return True
    except OSError:
        return False
    return False


def _config_dirs(path: Path) -> dict[str, Path]:
    """Immediate subdirectories that look like configs: not `data`, not split-named, holding data files."""
    out: dict[str, Path] = {}
    for child in sorted(path.iterdir()):
        if (child.is_dir() and not child.name.startswith((".", "__")) and child.name != "data"
                and _keyword_split(child.name) is None and _data_files_under(child)):
            out[child.name] = child
    return out


def iter_local_dataset_rows(path: Path, *, split: str, config: str | None = None) -> Iterator[Row]:
    """Stream `(row_number, row)` for one split of a local directory laid out like a Hub dataset repo, read
    with the real `datasets` packaged builders (parquet/json/csv) in streaming mode.

    Layouts: `data/<split>-00000-of-00001.parquet`, `data/<split>.jsonl`, `<split>.jsonl` at the top,
    `<split>/shard-*.csv`, and config subdirectories `<config>/<split>-*.parquet`.

    Why not plain `load_dataset(dir)`: `datasets` infers one builder for the whole directory (the most common
    extension) and, once it sees a sharded `data/train-00000-of-00001.*` name, ignores files like
    `data/validation.jsonl`; config subdirectories are merged into one `default` config. So the split ->
    files map is built here from the directory listing (the same split keywords as `datasets`), and each run
    of same-format files is passed as explicit `data_files` to the builder chosen by extension. A directory
    whose README.md declares `configs:` in its YAML header is left entirely to `datasets.load_dataset`.

    With `config=None` and config subdirectories: files outside them are used when there are any; otherwise a
    single config subdirectory is used, and several are a `bad_config` error listing them."""
    path = Path(path)
    what = f"'{path.name}'"
    if not path.is_dir():
        raise SourceError("dataset_not_found", f"Local dataset {what} is not a directory.")

    def hide_paths(err: SourceError) -> SourceError:
        message = err.message
        for prefix in {str(path.resolve()), str(path.absolute()), str(path)}:
            message = message.replace(prefix + os.sep, "").replace(prefix, what)
        return SourceError(err.code, message, err.line, err.retryable)

    def mapper(exc: BaseException) -> SourceError:
        return hide_paths(_map_datasets_error(exc, what, split=split, config=config, revision=None, token=None,
                                              hub=False))

    if _has_yaml_configs(path):
        def delegated() -> Iterator[Row]:
            import datasets

            with _scratch_cache() as cache_dir:
                try:
                    ds = datasets.load_dataset(str(path), config, split=split, streaming=True, cache_dir=cache_dir)
                except Exception as exc:
                    raise mapper(exc) from None
                yield from _iterate_mapped(ds, 0, mapper)

        return delegated()

    configs = _config_dirs(path)
    if config is not None and (config != "default" or "default" in configs):
        if not _CONFIG_NAME.match(config) or config not in configs:
            avail = ", ".join(configs) if configs else "default"
            raise SourceError("bad_config", f"Local dataset {what} has no config {config!r}; available configs: "
                                            f"{avail}. Set `config` to one of them.")
        root = configs[config]
        files = _data_files_under(root)
    else:
        root = path
        files = [p for p in _data_files_under(path)
                 if not any(p.is_relative_to(d) for d in configs.values())]
        if not files and len(configs) == 1:
            root = next(iter(configs.values()))
            files = _data_files_under(root)
        elif not files and configs:
            raise SourceError("bad_config", f"Local dataset {what} has several configs ({', '.join(configs)}) and "
                                            f"none was chosen; set `config` to one of them.")
    if not files:
        raise SourceError("no_data_files", f"Local dataset {what} has no data files (.parquet, .jsonl, .json, "
                                           f".csv, .tsv).")
    splits = _split_files(root, files)
    if split not in splits:
        raise SourceError("bad_split", f"Local dataset {what} has no split {split!r}; available splits: "
                                       f"{', '.join(splits)}. Pick one of them.")
    chosen = splits[split]

    def gen() -> Iterator[Row]:
        import datasets

        n = 0
        groups: list[tuple[tuple[str, tuple[tuple[str, Any], ...]], list[Path]]] = []
        for p in chosen:
            builder = _builder_for(p)
            assert builder is not None
            key = (builder[0], tuple(sorted(builder[1].items())))
            if groups and groups[-1][0] == key:
                groups[-1][1].append(p)
            else:
                groups.append((key, [p]))
        for (builder_name, extra), group in groups:
            rel = group[0].relative_to(path).as_posix() + (f" (and {len(group) - 1} more)" if len(group) > 1
                                                          else "")
            group_what = f"{what} (file {rel})"

            def group_mapper(exc: BaseException, group_what: str = group_what) -> SourceError:
                return hide_paths(_map_datasets_error(exc, group_what, split=split, config=config,
                                                      revision=None, token=None, hub=False))

            with _scratch_cache() as cache_dir:
                try:
                    ds = datasets.load_dataset(builder_name, data_files={split: [str(p) for p in group]},
                                               split=split, streaming=True, cache_dir=cache_dir, **dict(extra))
                except Exception as exc:
                    raise group_mapper(exc) from None
                for number, row in _iterate_mapped(ds, n, group_mapper):
                    yield number, row
                    n = number  # the numbering carries on into the next group

    return gen()
