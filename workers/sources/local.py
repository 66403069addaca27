"""Rows of local directories laid out like Hub dataset repositories (see `iter_local_dataset_rows`)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from workers.sources.common import Row, SourceError
from workers.sources.hub import _iterate_mapped, _map_datasets_error, _scratch_cache

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
