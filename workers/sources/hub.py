"""Rows of Hugging Face Hub datasets, streamed with `datasets` (see workers/sources/__init__.py, Hub notes).

Where the Hub is: `huggingface_hub` and `datasets` read HF_ENDPOINT, HF_HUB_OFFLINE and HF_HOME from the
environment once, when they are imported, so they belong in the worker's environment before it starts (the
integration tests start a worker with HF_ENDPOINT pointing at tests/fakes/hf_hub_server.py). HF_TOKEN is the
server's setting (`Settings.hf_token`), passed in as `token`; a job cannot bring its own, so errors about access
tell the operator what to set.

Beyond `load_dataset(..., streaming=True)`: a chosen config whose files are in another format than the default
config's is read with the reader for its own files (`_reader_for_split`, huggingface/datasets#7101), and an unknown
revision's error lists the dataset's branches and tags as the Hub reports them.
"""

from __future__ import annotations

import ast
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from workers.sources.common import Row, SourceError, one_line

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
            outcome.append(f"{type(exc).__name__}: {one_line(exc, 200)}")

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


def _gated(what: str, token: str | None, why: str = "it is gated") -> SourceError:
    """The server's token (HF_TOKEN, a setting) is the only one a job can use: say what the operator must do."""
    if token is None:
        return SourceError(
            "dataset_gated",
            f"Dataset {what} cannot be read: {why} on the Hugging Face Hub and this server has no Hugging Face "
            f"token. An operator must set HF_TOKEN for the workers to a token of an account that has accepted "
            f"the dataset's terms on its Hub page.")
    return SourceError(
        "dataset_gated",
        f"Dataset {what} cannot be read: {why} on the Hugging Face Hub and the server's HF_TOKEN has no access "
        f"to it. Accept the dataset's terms on its Hub page with the account of that token, or set HF_TOKEN to "
        f"a token that has access.")


def _not_found(what: str, token: str | None, status: str, *, hub: bool) -> SourceError:
    if not hub:
        return SourceError("dataset_not_found", f"Dataset {what} was not found; check the name.")
    private = ("a private dataset can only be read once HF_TOKEN is set on the server" if token is None
               else "or it is private and the server's HF_TOKEN cannot read it")
    return SourceError("dataset_not_found",
                       f"Dataset {what} was not found on the Hub{status}; check `name` ({private}).")


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
            return _unreachable(what, _redact(one_line(link, 200), token), retryable=True)
        if cls == "GatedRepoError" or (isinstance(link, DatasetNotFoundError) and "gated" in str(link)):
            return _gated(what, token)
        if cls == "RevisionNotFoundError" or (isinstance(link, DatasetNotFoundError)
                                              and "Revision" in str(link)):
            return SourceError("bad_revision",
                               f"Dataset {what} has no revision {revision!r}; set `revision` to a branch, tag "
                               f"or commit of that dataset.")
        if cls == "RepositoryNotFoundError" or isinstance(link, DatasetNotFoundError):
            return _not_found(what, token, "", hub=hub)
        if isinstance(link, DataFilesNotFoundError) or cls == "EmptyDatasetError":
            return SourceError("no_data_files", f"Dataset {what} has no data files that can be read "
                                                f"(parquet, jsonl, json, csv, ...).")
        if hub and isinstance(link, FileNotFoundError):  # its text may hold a server-side path: not shown
            return SourceError("dataset_not_found", f"Dataset {what} was not found on the Hub; check the name.")
        status = getattr(getattr(link, "response", None), "status_code", None)
        if cls.startswith("HfHubHTTPError") or status is not None:
            if status in (401, 403):
                return _gated(what, token, f"access was refused (HTTP {status})")
            if status == 404:
                return _not_found(what, token, " (HTTP 404)", hub=hub)
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
                + " Set `split` to one of them.",
            )
        if "BuilderConfig" in text or "Config name is missing" in text:
            avail = _available(text)
            head = (f"Dataset {what} has no config {config!r}" if config
                    else f"Dataset {what} has several configs and none was chosen")
            return SourceError("bad_config", head + (f"; available configs: {avail}." if avail else ".")
                               + " Set `config` to one of them.")
    source = "the Hub" if hub else "disk"
    return SourceError("bad_file", f"Could not read dataset {what} from {source} "
                                   f"({type(exc).__name__}: {_redact(one_line(exc), token)}).")


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


def _reader_for_split(builder: Any, name: str, split: str, *, cache_dir: str, token: str | None) -> Any:
    """The builder that reads `split` of the chosen config with the reader its own files need.

    `datasets` picks one file format for a whole repository, from its default config's files, and reads every
    config with it: a JSONL config beside a Parquet one would be read as Parquet (huggingface/datasets#7101).
    We infer the format of the chosen split's files with `datasets`' own rules and, when it differs, read those
    same resolved files (pinned to the commit) with the packaged builder for their format."""
    import datasets
    from datasets.data_files import DataFilesDict
    from datasets.load import infer_module_for_data_files
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    files = getattr(builder.config, "data_files", None)
    if not files:
        return builder
    # No such split: keep every split, so that the error lists the config's splits.
    chosen = {split: files[split]} if split in files else dict(files)
    try:
        module, module_kwargs = infer_module_for_data_files(DataFilesDict(chosen), path=name)
    except ValueError:  # splits in different formats: leave it to datasets' own error
        return builder
    if module is None or _PACKAGED_DATASETS_MODULES[module][0] == type(builder).__module__:
        return builder
    return datasets.load_dataset_builder(module, data_files={k: list(v) for k, v in chosen.items()},
                                         cache_dir=cache_dir, token=token, **module_kwargs)


def _bounded(fn: Callable[[], Any], timeout: float) -> Any:
    """fn() on a helper thread, given at most `timeout` seconds; None when it fails or does not finish."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except Exception:  # best effort: the caller has a message without it
            pass

    thread = threading.Thread(target=run, name="tuneq-hub-call", daemon=True)
    thread.start()
    thread.join(timeout)
    return out[0] if out else None


def _names(refs: Sequence[Any], limit: int = 20) -> str:
    names = [str(r.name) for r in refs]
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _refs_hint(name: str, token: str | None, timeout: float) -> str:
    """' Its branches: main; tags: v1.0.' as the Hub lists them, or '' when it cannot say."""

    def refs() -> Any:
        import datasets
        from huggingface_hub import HfApi

        return HfApi(endpoint=str(datasets.config.HF_ENDPOINT), token=token).list_repo_refs(
            name, repo_type="dataset")

    found = _bounded(refs, timeout)
    if found is None or not found.branches:
        return ""
    return (f" Its branches: {_names(found.branches)}"
            + (f"; tags: {_names(found.tags)}." if found.tags else "."))


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
    """Stream `(row_number, row)` from a Hub dataset, as `datasets.load_dataset(..., streaming=True)` would.

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
        kwargs: dict[str, Any] = {}
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
                # What load_dataset(..., streaming=True) does, in two steps so the builder can be checked.
                builder = datasets.load_dataset_builder(f"hf://datasets/{name}", config, cache_dir=cache_dir,
                                                        **kwargs)
                if not data_files:
                    builder = _reader_for_split(builder, name, split, cache_dir=cache_dir, token=token)
                ds = builder.as_streaming_dataset(split=split)
            except Exception as exc:
                err = mapper(exc)
                if err.code == "bad_revision":
                    err = SourceError(err.code, err.message + _refs_hint(name, token, connect_timeout))
                raise err from None
            yield from _iterate_mapped(ds, 0, mapper)

    return gen()
