"""Rows of local directories laid out like Hub dataset repositories (see `iter_local_dataset_rows`)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from workers.sources.common import Row, SourceError, one_line
from workers.sources.hub import _iterate_mapped, _map_datasets_error, _scratch_cache

# File extension -> (datasets packaged builder, builder kwargs)
_LOCAL_BUILDERS: dict[str, tuple[str, dict[str, Any]]] = {
    ".parquet": ("parquet", {}),
    ".jsonl": ("json", {}),
    ".json": ("json", {}),
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"sep": "\t"}),
}
_CONFIG_NAME = re.compile(r"^[A-Za-z0-9][\w.+-]*$")


def _builder_for(p: Path) -> tuple[str, dict[str, Any]] | None:
    return _LOCAL_BUILDERS.get(p.suffix.lower())


def _split_files(root: Path, exclude: Iterable[Path] = ()) -> dict[str, list[Path]]:
    """Split -> supported data files under root, by `datasets`' own rules (`get_data_patterns`, then
    `DataFilesDict.from_patterns`): the Hub and `load_dataset` would see the same splits. Files under `exclude`
    (other configs' directories) are left out; {} when there is no data file."""
    from datasets.data_files import DataFilesDict, EmptyDatasetError, get_data_patterns

    try:
        patterns = get_data_patterns(str(root))
        resolved = DataFilesDict.from_patterns(patterns, base_path=str(root))
    except (EmptyDatasetError, FileNotFoundError):
        return {}
    except ValueError as exc:  # e.g. a sharded file name whose split is not a word
        raise SourceError("bad_split", f"Local dataset '{root.name}': {one_line(exc)}") from None
    out: dict[str, list[Path]] = {}
    for split, files in resolved.items():
        kept = [Path(f) for f in files if _builder_for(Path(f)) is not None
                and not any(Path(f).is_relative_to(d.absolute()) for d in exclude)]
        if kept:
            out[str(split)] = kept
    return out


def _relative(p: Path, root: Path) -> str:
    for base in (root, root.absolute(), root.resolve()):
        if p.is_relative_to(base):
            return p.relative_to(base).as_posix()
    return p.name


def _is_split_name(name: str) -> bool:
    """A directory named for a split (`train`, `dev_2`, …), by `datasets`' split keywords and separators."""
    from datasets.data_files import NON_WORDS_CHARS, SPLIT_KEYWORDS

    words = {w for keywords in SPLIT_KEYWORDS.values() for w in keywords}
    return any(tok in words for tok in re.split(f"{NON_WORDS_CHARS}+", name.lower()))


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
                and not _is_split_name(child.name) and _split_files(child)):
            out[child.name] = child
    return out


def iter_local_dataset_rows(path: Path, *, split: str, config: str | None = None) -> Iterator[Row]:
    """Stream `(row_number, row)` for one split of a local directory laid out like a Hub dataset repo, read
    with the real `datasets` packaged builders (parquet/json/csv) in streaming mode.

    Layouts: `data/<split>-00000-of-00001.parquet`, `data/<split>.jsonl`, `<split>.jsonl` at the top,
    `<split>/shard-*.csv`, and config subdirectories `<config>/<split>-*.parquet`.

    Splits are resolved by `datasets`' own public helpers (`get_data_patterns`, `DataFilesDict.from_patterns`),
    so a directory has the splits the Hub would show for it: e.g. once `data/train-00000-of-00001.*` names a
    sharded split, a `data/validation.jsonl` beside it is not a split (name it `validation-00000-of-00001.jsonl`).
    Why not plain `load_dataset(dir)`: `datasets` infers one builder for the whole directory (the most common
    extension), and merges config subdirectories into one `default` config. So each run of same-format files of
    the split is passed as explicit `data_files` to the builder chosen by extension, and immediate
    subdirectories (not `data`, not named for a split) are configs. A directory whose README.md declares
    `configs:` in its YAML header is left entirely to `datasets.load_dataset`.

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
        splits = _split_files(configs[config])
    else:
        splits = _split_files(path, exclude=configs.values())
        if not splits and len(configs) == 1:
            splits = _split_files(next(iter(configs.values())))
        elif not splits and configs:
            raise SourceError("bad_config", f"Local dataset {what} has several configs ({', '.join(configs)}) and "
                                            f"none was chosen; set `config` to one of them.")
    if not splits:
        raise SourceError("no_data_files", f"Local dataset {what} has no data files (.parquet, .jsonl, .json, "
                                           f".csv, .tsv).")
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
            rel = _relative(group[0], path) + (f" (and {len(group) - 1} more)" if len(group) > 1
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
