"""workers/sources: local directories laid out like Hub datasets, read with the real `datasets` loader.

Self-contained: every data file is made here under tmp_path; nothing needs the live stack or the network."""

from __future__ import annotations

import textwrap
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.workers.support import source_error
from workers.sources import (
    SourceError,
    iter_local_dataset_rows,
)

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
    _jsonl(root / "data" / "validation-00000-of-00001.jsonl", [{"q": "v1", "a": "x"}, {"q": "v2", "a": "y"}])
    _jsonl(root / "data" / "test.jsonl", [{"q": "not a split: the sharded names above decide", "a": "-"}])
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
    err = source_error(iter_local_dataset_rows(root, split="validation", config="chat"))
    assert err.code == "bad_split" and "train" in err.message
    err = source_error(iter_local_dataset_rows(root, split="train", config="nope"))
    assert err.code == "bad_config" and "chat" in err.message


def test_local_dataset_bad_file_names_the_file(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _jsonl(root / "train.jsonl", [{"x": 1}])
    (root / "test.parquet").write_bytes(b"not parquet")
    err = source_error(iter_local_dataset_rows(root, split="test"))
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
