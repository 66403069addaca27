"""workers/sources: streaming row readers for uploaded files, local Hub-shaped directories and the Hub.

Self-contained: every data file is made here under tmp_path; nothing needs the live stack or the network."""

from __future__ import annotations

import gc
import json
import os
import pickle
import socket
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workers.sources import (
    SourceError,
    iter_csv,
    iter_file_rows,
    iter_hub_rows,
    iter_jsonl,
    iter_local_dataset_rows,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _err(it: Iterator[object]) -> SourceError:
    with pytest.raises(SourceError) as info:
        for _ in it:
            pass
    return info.value


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
        assert _err(iter_file_rows(tmp_path / "gone", fmt)).code == "file_not_found"


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
    err = _err(it)
    assert err.code == "invalid_utf8" and err.line == 3
    assert "Line 3" in err.message and "byte 10" in err.message


def test_jsonl_invalid_json_names_the_line(tmp_path: Path) -> None:
    p = _write_lines(tmp_path / "bad.jsonl", [b'{"a": 1}', b'{"a": 1,}'])
    err = _err(iter_jsonl(p))
    assert err.code == "invalid_json" and err.line == 2 and "Line 2" in err.message


def test_jsonl_non_object_line(tmp_path: Path) -> None:
    p = _write_lines(tmp_path / "arr.jsonl", [b'{"a": 1}', b"[1,2]"])
    err = _err(iter_jsonl(p))
    assert err.code == "not_an_object" and err.line == 2
    assert "Line 2" in err.message and "array" in err.message
    p2 = _write_lines(tmp_path / "str.jsonl", [b'"hello"'])
    assert "string" in _err(iter_jsonl(p2)).message


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
        err = _err(it)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.code == "line_too_long" and err.line == 2
    assert "Line 2" in err.message and "8000000" in err.message
    assert peak < 20_000_000, peak


def test_jsonl_line_limit_is_configurable(tmp_path: Path) -> None:
    p = _write_lines(tmp_path / "a.jsonl", [b'{"a": 1}', b'{"a": "' + b"x" * 200 + b'"}', b'{"a": 3}'])
    err = _err(iter_jsonl(p, max_line_bytes=100))
    assert err.code == "line_too_long" and err.line == 2
    assert len(list(iter_jsonl(p, max_line_bytes=300))) == 3


def test_jsonl_nesting_beyond_orjson_limit(tmp_path: Path) -> None:
    p = _write_lines(tmp_path / "deep.jsonl", [b'{"a": 1}', b'{"a": 2}', b"[" * 5000 + b"]" * 5000])
    err = _err(iter_jsonl(p))
    assert err.code == "too_deeply_nested" and err.line == 3 and "Line 3" in err.message
    p2 = _write_lines(tmp_path / "deep2.jsonl", [b"[" * 5000])  # unterminated as well
    assert _err(iter_jsonl(p2)).code in {"too_deeply_nested", "invalid_json"}


def test_jsonl_nesting_beyond_max_depth(tmp_path: Path) -> None:
    def nested(depth: int) -> bytes:  # an object holding depth-1 nested arrays: `depth` levels in all
        return b'{"a": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"

    p = _write_lines(tmp_path / "d.jsonl", [nested(64), nested(65)])
    it = iter_jsonl(p)
    assert next(it)[0] == 1
    err = _err(it)
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
    err = _err(it)
    assert err.code == "not_an_object" and err.line == 2 and "Element 2" in err.message


def test_json_errors(tmp_path: Path) -> None:
    p = tmp_path / "a.json"
    p.write_text('[\n{"a": 1},\n{"a": }\n]')
    err = _err(iter_file_rows(p, "json"))
    assert err.code == "invalid_json" and "line 3" in err.message

    p.write_bytes(b'[\n{"a": 1},\n{"a": "\xff"}]')
    err = _err(iter_file_rows(p, "json"))
    assert err.code == "invalid_utf8" and "Line 3" in err.message

    p.write_text('"just a string"')
    assert _err(iter_file_rows(p, "json")).code == "bad_file"

    # Arrays stream, so size is no longer an error; a broken file over max_json_bytes names the element instead
    # of the line (tests/workers/test_streaming_readers.py).
    p.write_text(json.dumps([{"a": "x" * 1000}]))
    assert list(iter_file_rows(p, "json", max_json_bytes=500)) == [(1, {"a": "x" * 1000})]

    p.write_text("[" * 3000 + "]" * 3000)
    assert _err(iter_file_rows(p, "json")).code == "too_deeply_nested"


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
    err = _err(iter_file_rows(p, "parquet"))
    assert err.code == "bad_file" and "Parquet" in err.message


def test_parquet_truncated_file(tmp_path: Path) -> None:
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"t": ["x" * 100] * 1000}), good)
    data = good.read_bytes()
    bad = tmp_path / "cut.parquet"
    bad.write_bytes(data[: len(data) // 2])
    assert _err(iter_file_rows(bad, "parquet")).code == "bad_file"


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
    err = _err(iter_file_rows(p, "csv"))
    assert err.code == "invalid_utf8" and err.line == 40 and "Line 40" in err.message
    assert "byte 3" in err.message


def test_csv_field_too_large_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "a.csv"
    _write_lines(p, [b"a,b", b"1,2", b'"' + b"x" * 200_000 + b'",3'])
    err = _err(iter_file_rows(p, "csv"))
    assert err.code == "bad_file" and err.line == 3 and "Line 3" in err.message


def test_csv_structure_errors(tmp_path: Path) -> None:
    p = tmp_path / "a.csv"
    _write_lines(p, [b"a,b", b"1,2,3"])
    err = _err(iter_csv(p))
    assert err.code == "bad_file" and err.line == 2 and "3 fields" in err.message
    _write_lines(p, [b"a,a", b"1,2"])
    assert _err(iter_csv(p)).code == "bad_file"
    _write_lines(p, [b"a,b", b"1," + b"x" * 500])
    assert _err(iter_csv(p, max_line_chars=100)).code == "line_too_long"


# ------------------------------------------------------------------------------------- local Hub-shaped dirs


def _parquet(path: Path, **cols: list[object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path)


def _jsonl(path: Path, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))


def test_local_dataset_mixed_formats(tmp_path: Path) -> None:
    root = tmp_path / "org__ds"
    _parquet(root / "data" / "train-00000-of-00002.parquet", q=["a", "b"], a=["1", "2"])
    _parquet(root / "data" / "train-00001-of-00002.parquet", q=["c"], a=["3"])
    _jsonl(root / "data" / "validation.jsonl", [{"q": "v1", "a": "x"}, {"q": "v2", "a": "y"}])
    (root / "README.md").write_text("# a dataset card without YAML\n")
    (root / ".gitattributes").write_text("*.parquet filter=lfs\n")
    train = list(iter_local_dataset_rows(root, split="train"))
    assert train == [(1, {"q": "a", "a": "1"}), (2, {"q": "b", "a": "2"}), (3, {"q": "c", "a": "3"})]
    val = list(iter_local_dataset_rows(root, split="validation"))
    assert val == [(1, {"q": "v1", "a": "x"}), (2, {"q": "v2", "a": "y"})]
    with pytest.raises(SourceError) as info:
        iter_local_dataset_rows(root, split="test")
    assert info.value.code == "bad_split"
    assert "train, validation" in info.value.message and "'test'" in info.value.message


def test_local_dataset_top_level_split_files(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _jsonl(root / "train.jsonl", [{"x": 1}, {"x": 2}])
    _jsonl(root / "dev.jsonl", [{"x": 3}])
    (root / "test.csv").write_text("x\n4\n")
    assert [r for _, r in iter_local_dataset_rows(root, split="train")] == [{"x": 1}, {"x": 2}]
    assert [r for _, r in iter_local_dataset_rows(root, split="validation")] == [{"x": 3}]
    assert [r for _, r in iter_local_dataset_rows(root, split="test")] == [{"x": 4}]


def test_local_dataset_without_split_names_is_train(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _jsonl(root / "conversations.jsonl", [{"x": 1}])
    assert list(iter_local_dataset_rows(root, split="train")) == [(1, {"x": 1})]
    with pytest.raises(SourceError) as info:
        iter_local_dataset_rows(root, split="validation")
    assert info.value.code == "bad_split" and "train" in info.value.message


def test_local_dataset_config_subdirectories(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _parquet(root / "en" / "train-00000-of-00001.parquet", t=["hello"])
    _parquet(root / "fr" / "train-00000-of-00001.parquet", t=["bonjour"])
    _jsonl(root / "fr" / "test.jsonl", [{"t": "salut"}])
    assert list(iter_local_dataset_rows(root, split="train", config="en")) == [(1, {"t": "hello"})]
    assert list(iter_local_dataset_rows(root, split="train", config="fr")) == [(1, {"t": "bonjour"})]
    assert list(iter_local_dataset_rows(root, split="test", config="fr")) == [(1, {"t": "salut"})]
    with pytest.raises(SourceError) as info:
        iter_local_dataset_rows(root, split="train", config="de")
    assert info.value.code == "bad_config" and "en, fr" in info.value.message
    with pytest.raises(SourceError) as info:
        iter_local_dataset_rows(root, split="train")
    assert info.value.code == "bad_config" and "en, fr" in info.value.message
    with pytest.raises(SourceError) as info:
        iter_local_dataset_rows(root, split="test", config="en")
    assert info.value.code == "bad_split" and "train" in info.value.message


def test_local_dataset_yaml_configs_use_the_datasets_loader(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _jsonl(root / "chat" / "rows.jsonl", [{"m": "hi"}])
    _jsonl(root / "other" / "rows.jsonl", [{"m": "other"}])
    (root / "README.md").write_text(textwrap.dedent("""\
        ---
        configs:
        - config_name: chat
          data_files:
          - split: train
            path: chat/*.jsonl
        - config_name: other
          data_files:
          - split: train
            path: other/*.jsonl
        ---
        # card
        """))
    assert list(iter_local_dataset_rows(root, split="train", config="chat")) == [(1, {"m": "hi"})]
    err = _err(iter_local_dataset_rows(root, split="validation", config="chat"))
    assert err.code == "bad_split" and "train" in err.message
    err = _err(iter_local_dataset_rows(root, split="train", config="nope"))
    assert err.code == "bad_config" and "chat" in err.message


def test_local_dataset_bad_file_names_the_file(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _jsonl(root / "train.jsonl", [{"x": 1}])
    (root / "test.parquet").write_bytes(b"not parquet")
    err = _err(iter_local_dataset_rows(root, split="test"))
    assert err.code == "bad_file" and "test.parquet" in err.message
    assert str(tmp_path) not in err.message


def test_local_dataset_leaves_no_files_in_the_datasets_cache(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    cache = tmp_path / "hf-datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    root = tmp_path / "ds"
    _jsonl(root / "train.jsonl", [{"x": 1}])
    assert list(iter_local_dataset_rows(root, split="train")) == [(1, {"x": 1})]
    assert not cache.exists() or not any(cache.iterdir())


def test_local_dataset_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as info:
        iter_local_dataset_rows(tmp_path / "nope", split="train")
    assert info.value.code == "dataset_not_found"


# ------------------------------------------------------------------------------------------------------- Hub

OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def _check_hub_error(err: SourceError, name: str, started: float) -> None:
    assert time.monotonic() - started < 20
    assert f"'{name}'" in err.message
    assert "Traceback" not in err.message and "File \"" not in err.message


@pytest.fixture
def online_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the process started without any offline switch (whatever the runner's environment says)."""
    import datasets
    import huggingface_hub.constants

    for var in OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def _point_hub_at(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """`datasets` passes its HF_ENDPOINT to every huggingface_hub call (which swaps it into its URLs)."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", endpoint)


def test_hub_offline_set_at_call_time(monkeypatch: pytest.MonkeyPatch, online_mode: None) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    err = _err(iter_hub_rows("org/name", config=None, split="train", revision=None, token=None))
    assert err.code == "hub_unreachable" and not err.retryable
    assert "POST /v1/files" in err.message and "offline" in err.message
    _check_hub_error(err, "org/name", started)


def test_hub_offline_set_at_startup_uses_the_library_path(tmp_path: Path) -> None:
    script = textwrap.dedent("""\
        import json, time
        import datasets
        from workers.sources import SourceError, iter_hub_rows
        assert datasets.config.HF_HUB_OFFLINE
        t = time.monotonic()
        try:
            for _ in iter_hub_rows("org/name", config=None, split="train", revision=None, token="hf_SECRETxyz123456"):
                pass
        except SourceError as e:
            print(json.dumps({"code": e.code, "message": e.message, "seconds": time.monotonic() - t}))
        """)
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_VARS}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["code"] == "hub_unreachable"
    assert "'org/name'" in out["message"] and "offline" in out["message"]
    assert "Traceback" not in out["message"] and "SECRET" not in out["message"]
    assert out["seconds"] < 5


def test_hub_unreachable_connection_refused(monkeypatch: pytest.MonkeyPatch, online_mode: None) -> None:
    with socket.socket() as s:  # a port that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _point_hub_at(monkeypatch, f"http://127.0.0.1:{port}")
    started = time.monotonic()
    err = _err(iter_hub_rows("org/name", config=None, split="train", revision=None, token="hf_SECRETxyz123456"))
    assert err.code == "hub_unreachable" and err.retryable
    assert "SECRET" not in err.message
    _check_hub_error(err, "org/name", started)


def test_hub_unreachable_silent_endpoint_is_bounded(monkeypatch: pytest.MonkeyPatch, online_mode: None) -> None:
    listener = socket.socket()  # accepts TCP connections in the kernel backlog but never answers
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        _point_hub_at(monkeypatch, f"http://127.0.0.1:{listener.getsockname()[1]}")
        started = time.monotonic()
        err = _err(iter_hub_rows("org/name", config=None, split="train", revision=None, token=None,
                                 connect_timeout=1.0))
        assert time.monotonic() - started < 5
        assert err.code == "hub_unreachable"
        _check_hub_error(err, "org/name", started)
    finally:
        listener.close()


def test_hub_default_endpoint_without_network(online_mode: None) -> None:
    """The real endpoint: here there is no network (hub_unreachable); with network the repo does not exist."""
    name = "tuneq-tests-nonexistent/definitely-not-a-dataset-7f3a"
    started = time.monotonic()
    err = _err(iter_hub_rows(name, config=None, split="train", revision=None, token=None))
    assert err.code in {"hub_unreachable", "dataset_not_found"}
    _check_hub_error(err, name, started)


class _FakeHub(BaseHTTPRequestHandler):
    error_code = "RepoNotFound"

    def _answer(self) -> None:
        status = 404 if self.error_code in {"RepoNotFound", "EntryNotFound"} else 403
        self.send_response(status)
        if self.path != "/":
            self.send_header("X-Error-Code", self.error_code)
            self.send_header("X-Error-Message", "nope")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(("hub_error", "code"), [("RepoNotFound", "dataset_not_found"),
                                                 ("GatedRepo", "dataset_gated")])
def test_hub_answers_are_mapped(monkeypatch: pytest.MonkeyPatch, online_mode: None, hub_error: str,
                                code: str, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    handler = type("Handler", (_FakeHub,), {"error_code": hub_error})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        _point_hub_at(monkeypatch, f"http://127.0.0.1:{server.server_address[1]}")
        started = time.monotonic()
        err = _err(iter_hub_rows("org/private", config=None, split="train", revision=None,
                                 token="hf_SECRETxyz123456"))
        assert err.code == code, err.message
        assert "SECRET" not in err.message
        _check_hub_error(err, "org/private", started)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("name", ["../etc", "/etc/passwd", "json", "a/b/c", "org/na me", ""])
def test_hub_rejects_names_that_are_not_repo_ids(name: str) -> None:
    with pytest.raises(SourceError) as info:
        iter_hub_rows(name, config=None, split="train", revision=None, token=None)
    assert info.value.code == "bad_name"
