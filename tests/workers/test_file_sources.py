"""workers/sources: streaming row readers for uploaded files (JSON Lines, JSON arrays, Parquet, CSV).

Self-contained: every data file is made here under tmp_path; nothing needs the live stack or the network."""

from __future__ import annotations

import gc
import json
import pickle
import tracemalloc
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.workers.support import source_error
from workers.sources import (
    SourceError,
    iter_csv,
    iter_file_rows,
    iter_jsonl,
)


def _write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


# ---------------------------------------------------------------------------------------------------- errors


def test_source_error_is_picklable_and_prints_its_message() -> None:
    err = SourceError("invalid_json", "Line 3 is not valid JSON.", line=3, retryable=False)
    back = pickle.loads(pickle.dumps(err))
    assert (back.code, back.message, back.line, back.retryable) == ("invalid_json", "Line 3 is not valid JSON.", 3,
                                                                    False)
    assert str(back) == "Line 3 is not valid JSON."


def test_unsupported_format(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as info:
        iter_file_rows(tmp_path / "x.xlsx", "xlsx")
    assert info.value.code == "unsupported_format"
    assert "jsonl" in info.value.message


def test_missing_file(tmp_path: Path) -> None:
    for fmt in ("jsonl", "json", "parquet", "csv"):
        assert source_error(iter_file_rows(tmp_path / "gone", fmt)).code == "file_not_found"


# ----------------------------------------------------------------------------------------------------- JSONL


def test_jsonl_rows_carry_their_line_numbers(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    p.write_bytes(
        b'\xef\xbb\xbf{"a": 1}\r\n'  # BOM + CRLF
        b"\n"
        b"   \t\n"
        b'{"a": 2, "s": "h\xc3\xa9"}\n'
        b'{"a": 3}'  # no final newline
    )
    rows = list(iter_file_rows(p, "jsonl"))
    assert rows == [(1, {"a": 1}), (4, {"a": 2, "s": "hé"}), (5, {"a": 3})]


def test_jsonl_many_rows_across_chunks(tmp_path: Path) -> None:
    p = tmp_path / "many.jsonl"
    with open(p, "wb") as f:
        for i in range(30_000):
            f.write(orjson.dumps({"i": i, "text": "x" * 60}) + b"\n")
    n = 0
    for n, (line, row) in enumerate(iter_jsonl(p), start=1):
        assert line == n and row["i"] == n - 1
    assert n == 30_000


def test_jsonl_invalid_utf8_names_the_line_and_byte(tmp_path: Path) -> None:
    p = _write_lines(tmp_path / "bad.jsonl", [b'{"a": 1}', b'{"a": 2}', b'{"a": "caf\xe9"}', b'{"a": 4}'])
    it = iter_jsonl(p)
    assert next(it) == (1, {"a": 1})
    assert next(it) == (2, {"a": 2})
    err = source_error(it)
    assert err.code == "invalid_utf8" and err.line == 3
    assert "Line 3" in err.message and "byte 10" in err.message


def test_jsonl_invalid_json_names_the_line(tmp_path: Path) -> None:
    p = _write_lines(tmp_path / "bad.jsonl", [b'{"a": 1}', b'{"a": 1,}'])
    err = source_error(iter_jsonl(p))
    assert err.code == "invalid_json" and err.line == 2 and "Line 2" in err.message


def test_jsonl_non_object_line(tmp_path: Path) -> None:
    p = _write_lines(tmp_path / "arr.jsonl", [b'{"a": 1}', b"[1,2]"])
    err = source_error(iter_jsonl(p))
    assert err.code == "not_an_object" and err.line == 2
    assert "Line 2" in err.message and "array" in err.message
    p2 = _write_lines(tmp_path / "str.jsonl", [b'"hello"'])
    assert "string" in source_error(iter_jsonl(p2)).message


def test_jsonl_huge_line_stops_early_with_flat_memory(tmp_path: Path) -> None:
    p = tmp_path / "huge.jsonl"
    with open(p, "wb") as f:
        f.write(b'{"ok": 1}\n{"text": "')
        block = b"a" * (1 << 20)
        for _ in range(50):
            f.write(block)
        f.write(b'"}\n{"ok": 3}\n')
    assert p.stat().st_size > 50_000_000
    gc.collect()
    tracemalloc.start()
    try:
        it = iter_file_rows(p, "jsonl")
        assert next(it) == (1, {"ok": 1})
        err = source_error(it)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.code == "line_too_long" and err.line == 2
    assert "Line 2" in err.message and "8000000" in err.message
    assert peak < 20_000_000, peak


def test_jsonl_line_limit_is_configurable(tmp_path: Path) -> None:
    p = _write_lines(tmp_path / "a.jsonl", [b'{"a": 1}', b'{"a": "' + b"x" * 200 + b'"}', b'{"a": 3}'])
    err = source_error(iter_jsonl(p, max_line_bytes=100))
    assert err.code == "line_too_long" and err.line == 2
    assert len(list(iter_jsonl(p, max_line_bytes=300))) == 3


def test_jsonl_nesting_beyond_orjson_limit(tmp_path: Path) -> None:
    p = _write_lines(tmp_path / "deep.jsonl", [b'{"a": 1}', b'{"a": 2}', b"[" * 5000 + b"]" * 5000])
    err = source_error(iter_jsonl(p))
    assert err.code == "too_deeply_nested" and err.line == 3 and "Line 3" in err.message
    p2 = _write_lines(tmp_path / "deep2.jsonl", [b"[" * 5000])  # unterminated as well
    assert source_error(iter_jsonl(p2)).code in {"too_deeply_nested", "invalid_json"}


def test_jsonl_nesting_beyond_max_depth(tmp_path: Path) -> None:
    def nested(depth: int) -> bytes:  # an object holding depth-1 nested arrays: `depth` levels in all
        return b'{"a": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"

    p = _write_lines(tmp_path / "d.jsonl", [nested(64), nested(65)])
    it = iter_jsonl(p)
    assert next(it)[0] == 1
    err = source_error(it)
    assert err.code == "too_deeply_nested" and err.line == 2
    assert len(list(iter_jsonl(p, max_depth=65))) == 2
    # Many brackets side by side are not deep.
    wide = _write_lines(tmp_path / "w.jsonl", [orjson.dumps({"m": [{"r": "u", "c": []} for _ in range(500)]})])
    assert len(list(iter_jsonl(wide))) == 1


# ------------------------------------------------------------------------------------------------------ JSON


def test_json_array(tmp_path: Path) -> None:
    p = tmp_path / "a.json"
    p.write_text(json.dumps([{"a": 1}, {"a": 2}], indent=2))
    assert list(iter_file_rows(p, "json")) == [(1, {"a": 1}), (2, {"a": 2})]


def test_json_array_element_not_an_object(tmp_path: Path) -> None:
    p = tmp_path / "a.json"
    p.write_text('[{"a": 1}, 5, {"a": 3}]')
    it = iter_file_rows(p, "json")
    assert next(it) == (1, {"a": 1})
    err = source_error(it)
    assert err.code == "not_an_object" and err.line == 2 and "Element 2" in err.message


def test_json_errors(tmp_path: Path) -> None:
    p = tmp_path / "a.json"
    p.write_text('[\n{"a": 1},\n{"a": }\n]')
    err = source_error(iter_file_rows(p, "json"))
    assert err.code == "invalid_json" and "line 3" in err.message

    p.write_bytes(b'[\n{"a": 1},\n{"a": "\xff"}]')
    err = source_error(iter_file_rows(p, "json"))
    assert err.code == "invalid_utf8" and "Line 3" in err.message

    p.write_text('"just a string"')
    assert source_error(iter_file_rows(p, "json")).code == "bad_file"

    # Arrays stream, so size is no longer an error; a broken file over max_json_bytes names the element instead
    # of the line (tests/workers/test_streaming_readers.py).
    p.write_text(json.dumps([{"a": "x" * 1000}]))
    assert list(iter_file_rows(p, "json", max_json_bytes=500)) == [(1, {"a": "x" * 1000})]

    p.write_text("[" * 3000 + "]" * 3000)
    assert source_error(iter_file_rows(p, "json")).code == "too_deeply_nested"


def test_json_file_holding_json_lines(tmp_path: Path) -> None:
    p = tmp_path / "rows.json"
    p.write_text('{"a": 1}\n{"a": 2}\n')
    assert list(iter_file_rows(p, "json")) == [(1, {"a": 1}), (2, {"a": 2})]


# --------------------------------------------------------------------------------------------------- Parquet


def test_parquet_streams_in_batches(tmp_path: Path) -> None:
    p = tmp_path / "a.parquet"
    n = 5000
    table = pa.table({"i": list(range(n)), "messages": [[{"role": "user", "content": f"q{i}"}] for i in range(n)]})
    pq.write_table(table, p, row_group_size=700)
    it = iter_file_rows(p, "parquet")
    first = next(it)
    assert first == (1, {"i": 0, "messages": [{"role": "user", "content": "q0"}]})
    count = 1
    for number, row in it:
        count += 1
        assert number == row["i"] + 1
    assert count == n


def test_parquet_corrupt_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.parquet"
    p.write_bytes(b"this is not parquet at all" * 10)
    err = source_error(iter_file_rows(p, "parquet"))
    assert err.code == "bad_file" and "Parquet" in err.message


def test_parquet_truncated_file(tmp_path: Path) -> None:
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"t": ["x" * 100] * 1000}), good)
    data = good.read_bytes()
    bad = tmp_path / "cut.parquet"
    bad.write_bytes(data[: len(data) // 2])
    assert source_error(iter_file_rows(bad, "parquet")).code == "bad_file"


# ------------------------------------------------------------------------------------------------------- CSV


def test_csv_rows_and_line_numbers(tmp_path: Path) -> None:
    p = tmp_path / "a.csv"
    p.write_bytes(
        b"\xef\xbb\xbfquestion,answer,n\r\n"
        b"what?,this,1\r\n"
        b"\r\n"
        b'"multi\r\nline",x,2\r\n'
        b"short,y\r\n"
        b"with,extra,3,\r\n"
    )
    rows = list(iter_file_rows(p, "csv"))
    assert rows == [
        (2, {"question": "what?", "answer": "this", "n": "1"}),
        (4, {"question": "multi\r\nline", "answer": "x", "n": "2"}),
        (6, {"question": "short", "answer": "y", "n": ""}),
        (7, {"question": "with", "answer": "extra", "n": "3"}),
    ]


def test_csv_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "a.csv"
    # Long lines first, so the text decoder's read-ahead is far past the row being parsed.
    lines = [b"a,b"] + [b"x" * 5000 + b"," + str(i).encode() for i in range(2, 40)] + [b"caf\xe9,1", b"ok,2"]
    _write_lines(p, lines)
    err = source_error(iter_file_rows(p, "csv"))
    assert err.code == "invalid_utf8" and err.line == 40 and "Line 40" in err.message
    assert "byte 3" in err.message


def test_csv_field_too_large_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "a.csv"
    _write_lines(p, [b"a,b", b"1,2", b'"' + b"x" * 200_000 + b'",3'])
    err = source_error(iter_file_rows(p, "csv"))
    assert err.code == "bad_file" and err.line == 3 and "Line 3" in err.message


def test_csv_structure_errors(tmp_path: Path) -> None:
    p = tmp_path / "a.csv"
    _write_lines(p, [b"a,b", b"1,2,3"])
    err = source_error(iter_csv(p))
    assert err.code == "bad_file" and err.line == 2 and "3 fields" in err.message
    _write_lines(p, [b"a,a", b"1,2"])
    assert source_error(iter_csv(p)).code == "bad_file"
    _write_lines(p, [b"a,b", b"1," + b"x" * 500])
    assert source_error(iter_csv(p, max_line_chars=100)).code == "line_too_long"
