"""Readers that never hold a whole file: JSON arrays parsed incrementally, previews with a row-size bound."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.workers.support import source_error
from workers.sources import SourceError, iter_file_rows


def _peak(fn: Callable[[], Any]) -> tuple[Any, int]:
    gc.collect()
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _big_array(path: Path, elements: int, tail: bytes = b"]") -> Path:
    with open(path, "wb") as f:
        f.write(b"[\n")
        for i in range(elements):
            row = {"messages": [{"role": "user", "content": f"question {i} " + "q" * 200},
                                {"role": "assistant", "content": f"answer {i} " + "a" * 200}]}
            f.write((b",\n" if i else b"") + orjson.dumps(row))
        f.write(b"\n" + tail)
    return path


def test_json_array_is_read_with_flat_memory(tmp_path: Path) -> None:
    path = _big_array(tmp_path / "big.json", 60_000)
    assert path.stat().st_size > 25_000_000

    def count() -> tuple[int, int]:
        last = n = 0
        for number, row in iter_file_rows(path, "json"):
            n += 1
            last = number
            assert row["messages"][1]["role"] == "assistant"
        return n, last

    (n, last), peak = _peak(count)
    assert n == last == 60_000
    assert peak < 5_000_000, peak


def test_json_array_stops_reading_when_the_caller_stops(tmp_path: Path) -> None:
    # Broken at the very end: a reader that parsed the whole file first would fail before the first row.
    path = _big_array(tmp_path / "broken-end.json", 20_000, tail=b"{oops")
    it = iter_file_rows(path, "json")
    first = [next(it) for _ in range(3)]
    assert [n for n, _ in first] == [1, 2, 3]
    it.close()  # type: ignore[attr-defined]
    err = source_error(iter_file_rows(path, "json"))
    assert err.code == "invalid_json"


def test_oversized_element_stops_early_with_flat_memory(tmp_path: Path) -> None:
    path = tmp_path / "huge-element.json"
    with open(path, "wb") as f:
        f.write(b'[{"ok": 1}, {"text": "')
        block = b"x" * (1 << 20)
        for _ in range(40):
            f.write(block)
        f.write(b'"}, {"ok": 3}]')

    def read() -> SourceError:
        it = iter_file_rows(path, "json")
        assert next(it) == (1, {"ok": 1})
        return source_error(it)

    err, peak = _peak(read)
    assert err.code == "line_too_long" and err.line == 2
    assert "Element 2" in err.message and "8000000" in err.message
    assert peak < 30_000_000, peak


def test_broken_array_over_the_diagnosis_size_names_the_element(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_bytes(b'[{"a": 1}, {"a": 2}, {"a": }]')
    err = source_error(iter_file_rows(path, "json", max_json_bytes=10))
    assert err.code == "invalid_json" and err.line == 3 and "element 3" in err.message
    err = source_error(iter_file_rows(path, "json"))  # small enough to name the line, as before
    assert err.code == "invalid_json" and "line 1" in err.message


def test_json_array_numbers_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b'\xef\xbb\xbf [{"f": 1.5, "i": 1234567890123456789, "n": null}]')
    assert list(iter_file_rows(path, "json")) == [(1, {"f": 1.5, "i": 1234567890123456789, "n": None})]


def test_preview_reads_a_huge_row_without_holding_it(tmp_path: Path) -> None:
    from app.errors import InvalidRequest
    from app.services.artifacts import nth_row, preview

    path = tmp_path / "rows.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"i": 0}\n\n{"i": 1}\n{"pad": "')
        for _ in range(40):
            f.write(b"p" * (1 << 20))
        f.write(b'"}\n{"i": 3}\n')

    def refuse() -> str:
        with pytest.raises(InvalidRequest) as info:
            preview(path, "jsonl", 5, max_row_bytes=1 << 20)
        return info.value.detail

    detail, peak = _peak(refuse)
    assert detail.startswith(f"row 2 is {40 * (1 << 20) + 12} bytes; preview shows rows up to 1048576 bytes")
    assert peak < 5_000_000, peak
    assert preview(path, "jsonl", 2, max_row_bytes=1 << 20) == [{"i": 0}, {"i": 1}]
    assert nth_row(path, 3, max_row_bytes=1 << 20) == {"i": 3}  # rows after a huge one stay reachable


def test_training_rows_are_read_by_offset_and_match_the_conversations(tmp_path: Path) -> None:
    from app.chat import count_batch
    from app.schemas.training import TrainingSpec
    from workers.errors import JobFailed
    from workers.pipelines.rows import Dataset, fit_rows
    from workers.pipelines.training import _datums

    convs = [[{"role": "user", "content": f"question {i} " + "word " * (i % 7) * 40},
              {"role": "assistant", "content": f"answer {i}"}] for i in range(300)]
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps({"messages": m}) for m in convs) + b"\n\n")
    spec = TrainingSpec(train_artifact="x", batch_size=8, max_length=150)
    fitted = fit_rows(Dataset(path, None), "training", max_length=spec.max_length, train_on=spec.train_on,
                      enable_thinking=spec.enable_thinking)
    counts = count_batch(convs)
    kept = [m for m, (n, _) in zip(convs, counts, strict=True) if n <= 150]
    assert 0 < len(kept) < 300
    assert fitted.total == 300 and len(fitted.rows) == len(kept)
    assert fitted.rows.offsets.dtype.itemsize == 8
    order = [5, 0, len(kept) - 1, 17]
    assert fitted.rows.take(order) == [kept[i] for i in order]
    by_offset, in_memory = _datums(spec, fitted.rows, order), _datums(spec, kept, order)
    assert (by_offset.tokens, by_offset.trained) == (in_memory.tokens, in_memory.trained)
    assert [d.model_input.to_ints() for d in by_offset.datums] == [d.model_input.to_ints() for d in in_memory.datums]
    with pytest.raises(JobFailed) as info:
        fit_rows(Dataset(path, None), "training", max_length=5, train_on=spec.train_on, enable_thinking=True)
    assert info.value.code == "no_trainable_examples"
