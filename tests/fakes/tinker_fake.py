"""An in-process fake Tinker service that the real ``tinker`` SDK talks to.

Seam: only the network is replaced. ``FakeTinker.service_client()`` returns a real ``tinker.ServiceClient``
(a subclass that only changes which holder class it builds). That holder is a subclass of the SDK's
``InternalClientHolder`` whose HTTP connection pools carry an ``httpx.AsyncClient`` with an in-memory transport
that routes every request to ``FakeTinker.handle``. Everything else is the SDK's own code: ``TrainingClient``,
``SamplingClient``, request ordering (``seq_id`` turns), retries and backoff, ``APIFuture`` polling of
``/retrieve_future``, proto encoding of ``forward_backward``, JSON/proto decoding of results, exceptions.
The holder also overrides ``_is_retryable_exception`` so that a fault marked ``surface`` reaches the caller at
once instead of after the SDK's five-minute retry budget (see docs/tinker-sdk-notes.md).

The "model": a vector ``theta`` of ``buckets`` floats per training run (LoRA-like: starts at zero). The logit of
target token ``y`` after input token ``x`` is ``z = bias + base[b] + theta[b]`` with ``b = hash(x, y) % buckets``;
``logprob = -softplus(-z)``; cross-entropy ``loss:sum = sum(weights * -logprob)``. ``forward_backward`` adds
``d loss / d theta`` to a gradient buffer, ``optim_step`` applies AdamW (torch semantics, decoupled weight
decay, bias correction, optional grad clipping) with ``learning_rate * lr_multiplier`` and clears the buffer.
So training lowers the loss, the mask changes the loss, and a replayed batch changes the final parameters.

Requests of one training run execute strictly in ``seq_id`` order (the order the SDK submitted them), each
after its configured latency. Every ``optim_step`` appends a record to the run's *lineage*: the step, and the
fingerprint (``batch_fingerprint``) of all datums sent with ``forward_backward`` since the previous step.
``save_state`` writes parameters, Adam state and lineage to ``<state_dir>/checkpoints/...json`` (atomically),
so a new process, or a new ``FakeTinker`` on the same directory, resumes from it with
``create_training_client_from_state_with_optimizer``. The ``user_metadata`` a run was created with (by
``create_lora_training_client`` or from a state) is kept: in ``run_metadata`` (one entry per run, in creation
order), in the run's model info, and as ``run_user_metadata`` in each checkpoint it saves (for tests in another
process).

Adapter export. ``save_weights_external(name)`` (``POST /api/v1/save_weights_external``, ordered like any
training request) writes the run's parameters as Hugging Face/PEFT-style files under
``<state_dir>/external/<run>/<name>/``: ``adapter_model.safetensors`` (a real safetensors file; one float32
tensor ``tuneq_fake.lora_theta`` holding the parameters) and ``adapter_config.json`` (``base_model_name_or_path``,
``r``, ...); the future's ``path`` is ``tinker://<run>/external_weights/<name>``. ``RestClient
.get_external_weights_urls(path)`` (``GET /api/v1/training_runs/<run>/checkpoints/external_weights/<name>/
external_weights_urls``) answers ``{file: signed_url}``: plain ``http://127.0.0.1:<port>/<token>/<file>?expires=
...&sig=...`` URLs served by a small real HTTP server (a daemon thread, started on first use, one per
``FakeTinker``; ``close()`` stops it). A bad signature or an expired URL gets 403. ``external_files()`` finds the
files the fake wrote (for tests in another process).

Config (a JSON-able dict; every key optional)::

    {
      "state_dir": "/path",                # checkpoints live here; default: a fresh temp dir (per process!)
      "seed": 0,                           # probability faults and sampling
      "latency": {"create_model": 0, "load": 0, "forward_backward": 0, "forward": 0, "optim_step": 0,
                  "save": 0, "sample": 0}, # seconds; "save" covers save_state and save_weights_for_sampler,
                                           # which can be set apart as "save_state" / "save_weights_for_sampler"
      "faults": [ {"op": "forward_backward", "kind": "http_503", "at": [2], "times": 1,
                   "probability": 0.0, "surface": false, "when": "before", "message": null} ],
      "buckets": 4096, "lr_multiplier": 100.0, "bias": -2.0,
      "poll_wait": 5.0,                    # how long a /retrieve_future long-poll waits before "try_again"
      "retry_after_ms": 10,                # Retry-After sent with injected 429/5xx (keeps SDK retries fast)
      "max_context": 32768, "max_sample_tokens": 32,
      "url_ttl_seconds": 3600,             # validity of the signed adapter download URLs
      "supported_models": ["Qwen/Qwen3-8B", ...]
    }

Faults. ``op`` is one of create_model, load_weights, forward_backward, forward, optim_step, save_state,
save_weights_for_sampler, save_weights_external, sample, download, or ``*``. ``at`` lists 1-based numbers of *logical* calls of that op in this
process (an SDK retry of the same request is the same call); ``probability`` rolls once per logical call.
``kind``:

* ``user_error`` / ``server_error``: accepted, then the future fails with ``tinker.RequestFailedError``
  (category User / Server) and nothing is applied;
* ``hang``: accepted, and never answered: the future stays pending for ever (every ``/retrieve_future`` poll
  answers ``try_again``), as with a stuck service. On a training run the requests queued behind it never run
  either; a client resumed from a checkpoint is a new run and is not affected;
* ``connection``, ``timeout``, ``http_<status>`` (e.g. ``http_500``, ``http_503``, ``http_429``): the first
  ``times`` HTTP attempts of the call fail. By default the SDK retries them (its real backoff; ``Retry-After``
  is honoured) and the caller never notices. With ``"surface": true`` the SDK is told not to retry, and the
  caller's ``.result()`` raises ``tinker.APIConnectionError`` / ``APITimeoutError`` / ``InternalServerError`` /
  ``RateLimitError`` / ... . ``"when": "after"`` fails the response *after* the request was accepted (a lost
  response): the SDK's retry is deduplicated by ``seq_id``; surfaced, the caller sees an error although the
  request did execute. A training request that surfaced ``before`` never reached the server: requests queued
  behind it fail with ``RequestFailedError`` (category Server), as that run cannot continue.

``download`` faults hit the plain HTTP GETs of signed adapter URLs (a call = one file of one URL set; ``times``
counts its attempts): ``http_<status>`` answers that status, ``connection`` / ``timeout`` close the connection
without an answer, ``user_error`` / ``server_error`` / ``hang`` answer 500 (downloads have read timeouts).

A worker process enables the fake through the settings ``tinker_fake =
"tests.fakes.tinker_fake:make_fake_service_client"`` and ``tinker_fake_config = <JSON above>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import hmac
import http.server
import json
import os
import random
import shutil
import tempfile
import threading
import time
import urllib.parse
import uuid
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import tinker
from tinker import types
from tinker.lib.internal_client_holder import ClientConnectionPool, InternalClientHolder
from tinker.proto import tinker_public_pb2 as pb

try:  # raised through the SDK's HTTP layer without its own retries; see _surface_connection_error
    from tinker._exceptions import _AuthFlowError
except ImportError:  # pragma: no cover - a future SDK without it: surfaced connection faults are retried
    _AuthFlowError = None  # type: ignore[assignment,misc]

__all__ = [
    "FAKE_API_KEY",
    "FAKE_BASE_URL",
    "FakeTinker",
    "FakeTinkerConfig",
    "FaultSpec",
    "batch_fingerprint",
    "external_files",
    "get_fake",
    "make_fake_service_client",
    "read_checkpoint",
]

FAKE_BASE_URL = "https://tinker.fake.invalid"
FAKE_API_KEY = "tml-tuneq-fake-0000"
VOCAB_SIZE = 151936  # Qwen3
EOS_TOKEN = 151645  # <|im_end|>
CHECKPOINT_FORMAT = "tuneq-fake-tinker/1"

DEFAULT_SUPPORTED_MODELS = (
    "Qwen/Qwen3-0.6B", "Qwen/Qwen3-1.7B", "Qwen/Qwen3-4B", "Qwen/Qwen3-4B-Instruct-2507",
    "Qwen/Qwen3-8B", "Qwen/Qwen3-8B-Base", "Qwen/Qwen3-14B", "Qwen/Qwen3-32B",
    "Qwen/Qwen3-30B-A3B", "Qwen/Qwen3-30B-A3B-Base", "Qwen/Qwen3-30B-A3B-Instruct-2507",
    "Qwen/Qwen3-235B-A22B-Instruct-2507", "meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.2-1B",
)

FAULT_OPS = ("create_model", "load_weights", "forward_backward", "forward", "optim_step", "save_state",
             "save_weights_for_sampler", "save_weights_external", "sample", "download", "*")
_RESULT_KINDS = {"user_error": "user", "server_error": "server"}
HANG = "hang"  # a result fault: the request is accepted and never answered
_LATENCY_KEYS = ("create_model", "load", "forward_backward", "forward", "optim_step", "save", "save_state",
                 "save_weights_for_sampler", "save_weights_external", "sample")
_SAVE_OPS = ("save_state", "save_weights_for_sampler", "save_weights_external")
_TRAINING_OPS = ("forward_backward", "forward", "optim_step", *_SAVE_OPS)
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_TENSOR = "tuneq_fake.lora_theta"
_SURFACE_MARK = "_tuneq_fake_surface"


# --------------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------------

@dataclass
class FaultSpec:
    op: str
    kind: str
    at: list[int] = field(default_factory=list)
    probability: float = 0.0
    times: int = 1
    surface: bool = False
    when: str = "before"
    message: str | None = None

    def __post_init__(self) -> None:
        if self.op not in FAULT_OPS:
            raise ValueError(f"fault op must be one of {FAULT_OPS}, got {self.op!r}")
        if not (self.is_result or self.kind in ("connection", "timeout") or _http_status(self.kind)):
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if self.when not in ("before", "after"):
            raise ValueError("fault 'when' must be 'before' or 'after'")
        self.at = [int(n) for n in self.at]
        self.times = max(1, int(self.times))

    @property
    def is_result(self) -> bool:
        return self.kind in _RESULT_KINDS or self.kind == HANG


def _http_status(kind: str) -> int | None:
    if kind.startswith("http_") and kind[5:].isdigit():
        status = int(kind[5:])
        return status if 400 <= status < 600 else None
    return None


@dataclass
class FakeTinkerConfig:
    state_dir: str | None = None
    seed: int = 0
    latency: dict[str, float] = field(default_factory=dict)
    faults: list[FaultSpec] = field(default_factory=list)
    buckets: int = 4096
    lr_multiplier: float = 100.0
    bias: float = -2.0
    poll_wait: float = 5.0
    retry_after_ms: int = 10
    max_context: int = 32768
    max_sample_tokens: int = 32
    url_ttl_seconds: int = 3600
    supported_models: list[str] = field(default_factory=lambda: list(DEFAULT_SUPPORTED_MODELS))

    @classmethod
    def from_json(cls, raw: FakeTinkerConfig | dict[str, Any] | str | None = None, **overrides: Any
                  ) -> FakeTinkerConfig:
        if isinstance(raw, FakeTinkerConfig):
            data: dict[str, Any] = asdict(raw)
        elif isinstance(raw, str):
            data = json.loads(raw) if raw.strip() else {}
        else:
            data = dict(raw or {})
        data.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown fake Tinker config keys: {sorted(unknown)}")
        faults = [f if isinstance(f, FaultSpec) else FaultSpec(**f) for f in data.pop("faults", [])]
        latency = {str(k): float(v) for k, v in dict(data.pop("latency", {}) or {}).items()}
        bad = set(latency) - set(_LATENCY_KEYS)
        if bad:
            raise ValueError(f"unknown latency keys {sorted(bad)}; known: {_LATENCY_KEYS}")
        if data.get("state_dir") is not None:
            data["state_dir"] = str(data["state_dir"])
        return cls(faults=faults, latency=latency, **data)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


# --------------------------------------------------------------------------------------------------------------
# Fingerprints and checkpoints
# --------------------------------------------------------------------------------------------------------------

def _fingerprint_arrays(targets: Iterable[np.ndarray]) -> str:
    digest = hashlib.sha1()
    for arr in targets:
        flat = np.asarray(arr, dtype="<i8").reshape(-1)
        digest.update(len(flat).to_bytes(8, "little"))
        digest.update(flat.tobytes())
    return digest.hexdigest()


def batch_fingerprint(datums: Sequence[types.Datum]) -> str:
    """sha1 over the datums' ``target_tokens``, in order: what the fake records for one optimizer step
    (all datums sent with ``forward_backward`` since the previous ``optim_step``)."""
    return _fingerprint_arrays(
        np.asarray(d.loss_fn_inputs["target_tokens"].data, dtype=np.int64) for d in datums)


def _parse_tinker_path(path: str) -> tuple[str, str, str]:
    if not path.startswith("tinker://"):
        raise _UserError(f"Invalid tinker path {path!r}: it must start with 'tinker://'.")
    parts = path[len("tinker://"):].split("/")
    if len(parts) != 3 or not all(parts) or parts[1] not in ("weights", "sampler_weights"):
        raise _UserError(f"Invalid tinker path {path!r}: expected tinker://<run>/weights/<name>.")
    return parts[0], parts[1], parts[2]


def _checkpoint_file(state_dir: Path, path: str) -> Path:
    run, kind, name = _parse_tinker_path(path)
    return state_dir / "checkpoints" / run / kind / f"{name}.json"


def _parse_external_path(path: str) -> tuple[str, str]:
    prefix = "tinker://"
    parts = path[len(prefix):].split("/") if path.startswith(prefix) else []
    if len(parts) != 3 or not parts[0] or parts[1] != "external_weights" or not _safe_name(parts[2]):
        raise _UserError(f"Invalid external weights path {path!r}: expected tinker://<run>/external_weights/<name>.")
    return parts[0], parts[2]


def _safe_name(name: str) -> bool:
    return bool(name) and "/" not in name and name not in (".", "..")


def _external_dir(state_dir: Path, path: str) -> Path:
    run, name = _parse_external_path(path)
    return state_dir / "external" / run / name


def external_files(state_dir: str | os.PathLike[str], path: str) -> dict[str, Path]:
    """The files the fake wrote for an external-weights checkpoint (``{file name: local path}``)."""
    folder = _external_dir(Path(state_dir), path)
    if not folder.is_dir():
        raise FileNotFoundError(f"no external weights {path} under {state_dir}")
    return {f.name: f for f in sorted(folder.iterdir()) if f.is_file() and not f.name.startswith(".")}


def _safetensors_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """A real safetensors file: u64-LE header length, JSON header (8-byte aligned), then the raw tensors."""
    header: dict[str, Any] = {"__metadata__": metadata}
    chunks, offset = [], 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name], dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        chunks.append(arr.tobytes())
        offset += arr.nbytes
    encoded = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    return len(encoded).to_bytes(8, "little") + encoded + b"".join(chunks)


def _atomic_write_bytes(file: Path, data: bytes) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, file)


def read_checkpoint(state_dir: str | os.PathLike[str], path: str) -> dict[str, Any]:
    """The stored record of a checkpoint (params, optimizer, lineage, ...); for tests in another process."""
    file = _checkpoint_file(Path(state_dir), path)
    if not file.exists():
        raise FileNotFoundError(f"no checkpoint {path} under {state_dir}")
    return json.loads(file.read_text())  # type: ignore[no-any-return]


def _atomic_write_json(file: Path, payload: dict[str, Any]) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w") as handle:
        json.dump(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, file)


# --------------------------------------------------------------------------------------------------------------
# Server-side state
# --------------------------------------------------------------------------------------------------------------

class _UserError(Exception):
    """A request the real service would reject as the caller's mistake (RequestFailedError, category User)."""


_HOLE = object()  # a seq_id the client gave up on: it will never arrive


@dataclass
class _Req:
    id: str
    op: str
    model_id: str | None
    seq_id: int | None
    payload: Any
    result_fault: FaultSpec | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    result: tuple[str, Any] | None = None

    def finish(self, kind: str, value: Any) -> None:
        self.result = (kind, value)
        self.done.set()


@dataclass
class _Model:
    model_id: str
    base_model: str
    lora_rank: int
    params: np.ndarray
    m: np.ndarray
    v: np.ndarray
    t: int = 0
    lineage: list[dict[str, Any]] = field(default_factory=list)
    origin: str | None = None
    user_metadata: dict[str, Any] | None = None  # the run's, as sent when it was created
    grad: np.ndarray | None = None
    pending: list[np.ndarray] = field(default_factory=list)
    pending_weight: float = 0.0
    next_seq: int = 1
    queue: dict[int, Any] = field(default_factory=dict)
    broken: str | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    worker: asyncio.Task[None] | None = None


@dataclass
class _SamplingSession:
    id: str
    base_model: str
    model_path: str | None
    params: np.ndarray


class _FaultBook:
    """Numbers logical calls per op and decides which fault (if any) each attempt gets."""

    def __init__(self, specs: list[FaultSpec], seed: int) -> None:
        self.specs = specs
        self.rng = random.Random(seed)
        self.counters: dict[str, int] = {}
        self.calls: dict[tuple[str, Any], dict[str, Any]] = {}
        self.injected: list[dict[str, Any]] = []
        self._lock = threading.Lock()  # downloads are served on other threads than the SDK's loop

    def attempt(self, op: str, key: Any) -> tuple[FaultSpec | None, FaultSpec | None, dict[str, Any]]:
        """(transport fault for this attempt, result fault for the call, the call record)."""
        with self._lock:
            return self._attempt(op, key)

    def _attempt(self, op: str, key: Any) -> tuple[FaultSpec | None, FaultSpec | None, dict[str, Any]]:
        record = self.calls.get((op, key))
        if record is None:
            self.counters[op] = number = self.counters.get(op, 0) + 1
            self.counters["*"] = any_number = self.counters.get("*", 0) + 1
            chosen: list[FaultSpec] = []
            for spec in self.specs:
                if spec.op not in (op, "*"):
                    continue
                n = number if spec.op == op else any_number
                if n in spec.at or (spec.probability > 0 and self.rng.random() < spec.probability):
                    chosen.append(spec)
            record = {"op": op, "call": number, "attempts": 0,
                      "transport": next((s for s in chosen if not s.is_result), None),
                      "result": next((s for s in chosen if s.is_result), None)}
            self.calls[(op, key)] = record
        record["attempts"] += 1
        transport = record["transport"]
        if transport is not None and record["attempts"] > transport.times:
            transport = None
        firing: tuple[FaultSpec | None, ...] = (transport, record["result"] if record["attempts"] == 1 else None)
        for fired in firing:
            if fired is not None:
                self.injected.append({"op": op, "call": record["call"], "attempt": record["attempts"],
                                      "kind": fired.kind, "surface": fired.surface, "when": fired.when})
        return transport, record["result"], record


# --------------------------------------------------------------------------------------------------------------
# The SDK seam: holder with an in-memory transport, and a ServiceClient that builds it
# --------------------------------------------------------------------------------------------------------------

class _FakeTransport(httpx.AsyncBaseTransport):
    def __init__(self, server: FakeTinker) -> None:
        self._server = server

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        return await self._server.handle(request)


def _is_surfaced(exc: BaseException) -> bool:
    if getattr(exc, _SURFACE_MARK, False):
        return True
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    return bool(headers is not None and headers.get("x-tuneq-fake-surface") == "1")


class _FakeHolder(InternalClientHolder):
    """The SDK's holder, with every HTTP connection pool pointed at the fake's in-memory transport."""

    def __init__(self, server: FakeTinker, **kwargs: Any) -> None:
        self._fake_server = server
        super().__init__(**kwargs)

    def _create_client_connection_pool(self, max_requests_per_client: int, auth: Any, *,
                                       client_config: types.ClientConfigResponse | None = None
                                       ) -> ClientConnectionPool:
        kwargs = {**self._constructor_kwargs, "_auth": auth,
                  "http_client": httpx.AsyncClient(transport=_FakeTransport(self._fake_server))}
        if client_config is not None:
            kwargs["_client_config"] = client_config
        return ClientConnectionPool(self.get_loop(), max_requests_per_client, kwargs)

    @staticmethod
    def _is_retryable_exception(exception: Exception) -> bool:
        if _is_surfaced(exception):
            return False
        return InternalClientHolder._is_retryable_exception(exception)


class _FakeServiceClient(tinker.ServiceClient):
    """A real ``tinker.ServiceClient`` whose lazily built holders are ``_FakeHolder``s."""

    def __init__(self, server: FakeTinker, **kwargs: Any) -> None:
        self._fake_server = server
        super().__init__(api_key=FAKE_API_KEY, base_url=FAKE_BASE_URL, **kwargs)

    def _get_session_holder(self) -> InternalClientHolder:
        with self._session_holder_lock:
            with self._lifecycle_lock:
                build = self._session_holder is None and not self._closed
            if build:
                self._session_holder = _FakeHolder(
                    self._fake_server, user_metadata=self._user_metadata, project_id=self._project_id,
                    display_name=self._display_name, base_url=self._base_url, api_key=self._api_key,
                    default_headers_overrides=self._default_headers_overrides)
        return super()._get_session_holder()

    def _get_rest_holder(self) -> InternalClientHolder:
        with self._rest_holder_lock:
            with self._lifecycle_lock:
                build = self._rest_holder is None and not self._closed
            if build:
                self._rest_holder = _FakeHolder(
                    self._fake_server, base_url=self._base_url, api_key=self._api_key,
                    default_headers_overrides=self._default_headers_overrides, _skip_session=True)
        return super()._get_rest_holder()


# --------------------------------------------------------------------------------------------------------------
# The fake service
# --------------------------------------------------------------------------------------------------------------

def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=payload, headers=headers)


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


class FakeTinker:
    """The fake Tinker service. Build clients with ``service_client()``; inspect with ``lineage()``,
    ``params()``, ``calls``, ``faults_injected``; read saved checkpoints with ``read_checkpoint()``."""

    def __init__(self, config: FakeTinkerConfig | dict[str, Any] | str | None = None, **overrides: Any) -> None:
        self.config = FakeTinkerConfig.from_json(config, **overrides)
        if self.config.state_dir is None:
            self.config.state_dir = tempfile.mkdtemp(prefix="tuneq-fake-tinker-")
        self.state_dir = Path(self.config.state_dir)
        (self.state_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        self.models: dict[str, _Model] = {}
        self.sampling_sessions: dict[str, _SamplingSession] = {}
        self.sessions: list[str] = []
        self.calls: list[dict[str, Any]] = []  # executed requests, in execution order
        self._requests: dict[str, _Req] = {}
        self._by_key: dict[tuple[str, Any], _Req] = {}
        self._faults = _FaultBook(self.config.faults, self.config.seed)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._base_cache: dict[str, tuple[np.ndarray, int]] = {}
        self.downloads: list[dict[str, Any]] = []  # GETs of signed adapter URLs, in arrival order
        self.run_metadata: list[dict[str, Any] | None] = []  # user_metadata of each training run created
        self._export_server: _ExportServer | None = None
        self._export_lock = threading.Lock()

    # ---- public helpers -----------------------------------------------------------------------------------

    def service_client(self, **kwargs: Any) -> tinker.ServiceClient:
        """A real ``tinker.ServiceClient`` (``user_metadata``, ``project_id``, ``display_name`` pass through)."""
        return _FakeServiceClient(self, **kwargs)

    @property
    def faults_injected(self) -> list[dict[str, Any]]:
        return list(self._faults.injected)

    def lineage(self, model_id_or_path: str) -> list[dict[str, Any]]:
        if model_id_or_path.startswith("tinker://"):
            return list(self.read_checkpoint(model_id_or_path)["lineage"])
        return [dict(step) for step in self.models[model_id_or_path].lineage]

    def applied_fingerprints(self, model_id_or_path: str) -> list[str]:
        """The batch fingerprints applied by optimizer steps of this run (or checkpoint), oldest first."""
        return [step["fingerprint"] for step in self.lineage(model_id_or_path) if step["fingerprint"]]

    def params(self, model_id_or_path: str) -> np.ndarray:
        if model_id_or_path.startswith("tinker://"):
            return np.asarray(self.read_checkpoint(model_id_or_path)["params"], dtype=np.float64)
        return self.models[model_id_or_path].params.copy()

    def read_checkpoint(self, path: str) -> dict[str, Any]:
        return read_checkpoint(self.state_dir, path)

    def external_files(self, path: str) -> dict[str, Path]:
        return external_files(self.state_dir, path)

    def close(self) -> None:
        """Stop the adapter download server, if it was started (clients made from this fake stay usable)."""
        with self._export_lock:
            server, self._export_server = self._export_server, None
        if server is not None:
            server.stop()

    def checkpoints(self) -> list[str]:
        root = self.state_dir / "checkpoints"
        return sorted(f"tinker://{f.parent.parent.name}/{f.parent.name}/{f.stem}" for f in root.glob("*/*/*.json"))

    # ---- HTTP entry point (runs on the SDK's event loop) --------------------------------------------------

    async def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        at = path.find("/api/v1/")
        route = path[at + len("/api/v1/"):] if at >= 0 else path.lstrip("/")
        try:
            if request.method == "GET":
                return self._handle_get(route)
            body = request.content
            if request.headers.get("content-encoding") == "zstd":
                import zstandard

                body = zstandard.ZstdDecompressor().decompress(body)
            if route == "forward_backward":
                return await self._forward_backward(request, body)
            data = json.loads(body) if body else {}
            return await self._handle_post(request, route, data)
        except _UserError as exc:
            return _json({"detail": str(exc)}, status=400)
        except (KeyError, ValueError, TypeError) as exc:
            return _json({"detail": f"bad request: {exc}"}, status=400)

    def _handle_get(self, route: str) -> httpx.Response:
        if route == "get_server_capabilities":
            return _json({"supported_models": [
                {"model_name": name, "max_context_length": self.config.max_context, "trainable": True,
                 "sampleable": True} for name in self.config.supported_models]})
        if route == "healthz":
            return _json({"status": "ok"})
        if route.startswith("training_runs/") and route.endswith("/external_weights_urls"):
            return self._external_weights_urls(route)
        if route.startswith("samplers/"):
            session = self.sampling_sessions.get(route.split("/", 1)[1])
            if session is None:
                return _json({"detail": "sampler not found"}, status=404)
            return _json({"sampler_id": session.id, "base_model": session.base_model,
                          "model_path": session.model_path})
        return _json({"detail": f"GET /api/v1/{route} is not implemented by the fake"}, status=404)

    async def _handle_post(self, request: httpx.Request, route: str, data: dict[str, Any]) -> httpx.Response:
        if route == "client/config":
            return _json({"pjwt_auth_enabled": False, "use_pyqwest_transport": False,
                          "proto_compress_fwdbwd": False, "parallel_fwdbwd_chunks": True,
                          "sample_use_retrieve_futures": False, "sample_join_sampling_session": False,
                          "custom_loss_server_side": False})
        if route == "client/dynamic_config":
            return _json({})
        if route == "create_session":
            session_id = str(uuid.uuid4())
            self.sessions.append(session_id)
            return _json({"type": "create_session", "session_id": session_id})
        if route == "session_heartbeat":
            return _json({"type": "session_heartbeat"})
        if route == "telemetry":
            return _json({"status": "accepted"})
        if route.startswith("sessions/") and route.endswith("/finish"):
            return _json({})
        if route == "retrieve_future":
            return await self._retrieve(data)
        if route == "get_info":
            model = self.models.get(data["model_id"])
            if model is None:
                return _json({"detail": f"model {data['model_id']} not found"}, status=404)
            return _json(self._info(model))
        if route == "create_sampling_session":
            return self._create_sampling_session(data)
        submit = {
            "create_model": self._submit_create_model,
            "optim_step": self._submit_optim_step,
            "save_weights": self._submit_save_state,
            "save_weights_for_sampler": self._submit_save_for_sampler,
            "save_weights_external": self._submit_save_external,
            "load_weights": self._submit_load_weights,
            "asample": self._submit_sample,
        }.get(route)
        if submit is None:
            return _json({"detail": f"POST /api/v1/{route} is not implemented by the fake"}, status=404)
        return await submit(request, data)

    # ---- submission with fault injection ------------------------------------------------------------------

    async def _submit(self, request: httpx.Request, op: str, key: Any, make: Any,
                      extra: dict[str, Any] | None = None) -> httpx.Response:
        """Accept (or deduplicate) one request. ``make(result_fault)`` builds and schedules the ``_Req``."""
        transport, result_fault, _record = self._faults.attempt(op, key)
        if transport is not None and transport.when == "before":
            if transport.surface:
                self._mark_hole(op, key)
            return self._transport_failure(request, transport)
        req = self._by_key.get((op, key))
        if req is None:
            req = make(result_fault)
            self._requests[req.id] = req
            self._by_key[(op, key)] = req
        if transport is not None:  # "after": accepted, but the response is lost
            return self._transport_failure(request, transport)
        payload: dict[str, Any] = {"request_id": req.id}
        if req.model_id is not None:
            payload["model_id"] = req.model_id
        payload.update(extra or {})
        return _json(payload)

    def _transport_failure(self, request: httpx.Request, spec: FaultSpec) -> httpx.Response:
        message = spec.message or f"injected {spec.kind} fault"
        status = _http_status(spec.kind)
        if status is not None:
            headers = {"retry-after-ms": str(self.config.retry_after_ms)}
            if spec.surface:
                headers.update({"x-should-retry": "false", "x-tuneq-fake-surface": "1"})
            return _json({"detail": message}, status=status, headers=headers)
        if spec.surface:
            _surface_connection_error(request, timeout=spec.kind == "timeout")
        if spec.kind == "timeout":
            raise httpx.ReadTimeout(message, request=request)
        raise httpx.ConnectError(message, request=request)

    def _mark_hole(self, op: str, key: Any) -> None:
        if op in _TRAINING_OPS \
                or (op == "load_weights" and isinstance(key, tuple) and key[0] == "model"):
            model_id, seq_id = key[-2], key[-1]
            model = self.models.get(model_id)
            if model is not None and seq_id >= model.next_seq and seq_id not in model.queue:
                model.queue[seq_id] = _HOLE
                self._wake(model)

    def _enqueue(self, model: _Model, req: _Req) -> None:
        assert req.seq_id is not None
        if req.seq_id < model.next_seq:
            req.finish("error", ("user", f"seq_id {req.seq_id} was already used for {model.model_id}"))
            return
        model.queue[req.seq_id] = req  # replaces a hole if the client did send it after all
        self._wake(model)

    def _wake(self, model: _Model) -> None:
        if model.worker is None:
            model.worker = asyncio.get_running_loop().create_task(self._drain(model))
        model.wake.set()

    def _schedule(self, req: _Req, run: Any) -> None:
        async def _go() -> None:
            await asyncio.sleep(self._latency(req.op))
            self._execute(req, run)

        task = asyncio.get_running_loop().create_task(_go())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, model: _Model) -> None:
        """Run the model's queued requests in seq_id order; exit when the queue is empty."""
        try:
            while model.queue:
                item = model.queue.pop(model.next_seq, None)
                if item is None:  # a later seq_id arrived first (parallel chunks): wait for the gap
                    model.wake.clear()
                    await model.wake.wait()
                    continue
                model.next_seq += 1
                if item is _HOLE:
                    model.broken = (f"request seq_id {model.next_seq - 1} of {model.model_id} never reached "
                                    "the server; this training run cannot continue")
                    continue
                req: _Req = item
                if model.broken:
                    req.finish("error", ("server", model.broken))
                    continue
                await asyncio.sleep(self._latency(req.op))
                self._execute(req, lambda r=req, m=model: self._run_training_op(m, r))
                if not req.done.is_set():  # a `hang` fault: this run is stuck for good
                    await asyncio.Event().wait()
        finally:
            model.worker = None

    def _execute(self, req: _Req, run: Any) -> None:
        entry = {"op": req.op, "model_id": req.model_id, "seq_id": req.seq_id, "request_id": req.id,
                 "time": time.monotonic()}
        if req.result_fault is not None and req.result_fault.kind == HANG:
            entry["hung"] = True  # never finished: its future never resolves
        elif req.result_fault is not None:
            category = _RESULT_KINDS[req.result_fault.kind]
            req.finish("error", (category, req.result_fault.message or f"injected {req.result_fault.kind}"))
            entry["failed"] = category
        else:
            try:
                kind, value, info = run()
                entry.update(info)
                req.finish(kind, value)
            except _UserError as exc:
                req.finish("error", ("user", str(exc)))
                entry["failed"] = "user"
            except Exception as exc:  # a bug in the fake: report it the way the service would
                req.finish("error", ("server", f"fake internal error: {type(exc).__name__}: {exc}"))
                entry["failed"] = "server"
        self.calls.append(entry)

    def _latency(self, op: str) -> float:
        lat = self.config.latency
        if op in _SAVE_OPS:
            return float(lat.get(op, lat.get("save", 0.0)))
        if op == "load_weights":
            return float(lat.get("load", 0.0))
        return float(lat.get(op, 0.0))

    async def _retrieve(self, data: dict[str, Any]) -> httpx.Response:
        req = self._requests.get(data["request_id"])
        if req is None:
            return _json({"detail": f"unknown request {data['request_id']}"}, status=404)
        if not req.done.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(req.done.wait(), timeout=self.config.poll_wait)
        if req.result is None:
            return _json({"type": "try_again", "request_id": req.id, "queue_state": "active"})
        kind, value = req.result
        if kind == "proto":
            return httpx.Response(200, content=value, headers={"content-type": "application/x-protobuf"})
        if kind == "error":
            category, message = value
            return _json({"error": message, "category": category})
        return _json(value)

    # ---- models ---------------------------------------------------------------------------------------------

    def _base(self, base_model: str) -> tuple[np.ndarray, int]:
        cached = self._base_cache.get(base_model)
        if cached is None:
            salt = zlib.crc32(base_model.encode())
            rng = np.random.default_rng(salt)
            cached = (rng.normal(0.0, 0.5, self.config.buckets), salt % 1_000_003)
            self._base_cache[base_model] = cached
        return cached

    def _buckets(self, base_model: str, inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        _, salt = self._base(base_model)
        mixed = inputs.astype(np.int64) * 1_000_003 + targets.astype(np.int64) * 7_919 + salt
        return np.mod(mixed, self.config.buckets)

    def _logits(self, base_model: str, params: np.ndarray, buckets: np.ndarray) -> np.ndarray:
        base, _ = self._base(base_model)
        return self.config.bias + base[buckets] + params[buckets]

    def _check_base_model(self, base_model: str) -> None:
        if base_model not in self.config.supported_models:
            raise _UserError(f"Base model {base_model!r} is not supported. Supported models: "
                             f"{', '.join(self.config.supported_models)}")

    def _new_model(self, model_id: str, base_model: str, rank: int) -> _Model:
        zeros = np.zeros(self.config.buckets)
        model = _Model(model_id=model_id, base_model=base_model, lora_rank=rank, params=zeros.copy(),
                       m=zeros.copy(), v=zeros.copy(), grad=zeros.copy())
        self.models[model_id] = model
        return model

    def _note_run_metadata(self, model: _Model, metadata: dict[str, Any] | None) -> None:
        """The run's user_metadata (what the Tinker console shows to trace a run back to its job): kept on the
        model, in ``run_metadata`` and in each checkpoint it saves (``run_user_metadata``)."""
        model.user_metadata = dict(metadata) if metadata else None
        self.run_metadata.append(model.user_metadata)

    def _info(self, model: _Model) -> dict[str, Any]:
        return {"type": "get_info", "model_id": model.model_id, "is_lora": True, "lora_rank": model.lora_rank,
                "model_name": model.base_model, "optimizer_config": {"type": "adamw"},
                "user_metadata": model.user_metadata,
                "model_data": {"arch": "qwen3", "model_name": model.base_model,
                               "tokenizer_id": model.base_model}}

    async def _submit_create_model(self, request: httpx.Request, data: dict[str, Any]) -> httpx.Response:
        create = types.CreateModelRequest.model_validate(data)
        model_id = f"{create.session_id}:train:{create.model_seq_id}"

        def make(fault: FaultSpec | None) -> _Req:
            req = _Req(uuid.uuid4().hex, "create_model", model_id, 0, create, fault)

            def run() -> tuple[str, Any, dict[str, Any]]:
                self._check_base_model(create.base_model)
                if create.lora_config is None or create.lora_config.rank <= 0:
                    raise _UserError("A LoRA config with a positive rank is required.")
                if getattr(create.optimizer_config, "type", "adamw") != "adamw":
                    raise _UserError("Only the adamw optimizer is supported by the fake.")
                if model_id in self.models:
                    raise _UserError(f"Model {model_id} already exists.")
                model = self._new_model(model_id, create.base_model, create.lora_config.rank)
                self._note_run_metadata(model, create.user_metadata)
                return "json", {"type": "create_model", "model_id": model_id}, {}

            self._schedule(req, run)
            return req

        return await self._submit(request, "create_model", (create.session_id, create.model_seq_id), make)

    async def _submit_load_weights(self, request: httpx.Request, data: dict[str, Any]) -> httpx.Response:
        load = types.LoadWeightsRequest.model_validate(data)
        if load.session_id is not None:  # create-via-load: a new model whose first request is the load
            model_id = f"{load.session_id}:train:{load.model_seq_id}"

            def make(fault: FaultSpec | None) -> _Req:
                req = _Req(uuid.uuid4().hex, "load_weights", model_id, 0, load, fault)
                self._schedule(req, lambda: self._create_from_checkpoint(model_id, load))
                return req

            return await self._submit(request, "load_weights", ("new", load.session_id, load.model_seq_id), make)

        model = self.models.get(load.model_id or "")
        if model is None:
            return _json({"detail": f"model {load.model_id} not found"}, status=404)

        def make_legacy(fault: FaultSpec | None) -> _Req:
            req = _Req(uuid.uuid4().hex, "load_weights", model.model_id, load.seq_id, load, fault)
            self._enqueue(model, req)
            return req

        return await self._submit(request, "load_weights", ("model", model.model_id, load.seq_id), make_legacy)

    def _load_record(self, path: str) -> dict[str, Any]:
        file = _checkpoint_file(self.state_dir, path)
        if not file.exists():
            raise _UserError(f"Checkpoint {path} not found.")
        return json.loads(file.read_text())  # type: ignore[no-any-return]

    def _restore(self, model: _Model, record: dict[str, Any], path: str, optimizer: bool) -> None:
        if len(record["params"]) != self.config.buckets:
            raise _UserError(f"Checkpoint {path} does not fit this fake (bucket count differs).")
        model.params = np.asarray(record["params"], dtype=np.float64)
        model.grad = np.zeros(self.config.buckets)
        model.pending, model.pending_weight = [], 0.0
        if optimizer:
            state = record.get("optimizer")
            if state is None:
                raise _UserError(f"Checkpoint {path} has no optimizer state (sampler weights cannot resume).")
            model.m = np.asarray(state["m"], dtype=np.float64)
            model.v = np.asarray(state["v"], dtype=np.float64)
            model.t = int(state["t"])
        else:
            model.m, model.v, model.t = np.zeros_like(model.params), np.zeros_like(model.params), 0
        model.lineage = [dict(step) for step in record["lineage"]]
        model.origin = path

    def _create_from_checkpoint(self, model_id: str, load: types.LoadWeightsRequest
                                ) -> tuple[str, Any, dict[str, Any]]:
        record = self._load_record(load.path)
        base_model = load.base_model or record["base_model"]
        if base_model != record["base_model"]:
            raise _UserError(f"Checkpoint {load.path} was trained on {record['base_model']}, not {base_model}.")
        self._check_base_model(base_model)
        if model_id in self.models:
            raise _UserError(f"Model {model_id} already exists.")
        model = self._new_model(model_id, base_model, int(record["lora_rank"]))
        self._restore(model, record, load.path, load.optimizer)
        self._note_run_metadata(model, load.user_metadata)
        return "json", {"type": "load_weights", "path": load.path, "model_id": model_id}, {"path": load.path}

    # ---- training ops ----------------------------------------------------------------------------------------

    async def _forward_backward(self, request: httpx.Request, body: bytes) -> httpx.Response:
        msg = pb.ForwardBackwardRequest()
        msg.ParseFromString(body)
        model = self.models.get(msg.model_id)
        if model is None:
            return _json({"detail": f"model {msg.model_id} not found"}, status=404)
        op = "forward" if msg.forward_only else "forward_backward"

        def make(fault: FaultSpec | None) -> _Req:
            req = _Req(uuid.uuid4().hex, op, model.model_id, msg.seq_id, msg, fault)
            self._enqueue(model, req)
            return req

        return await self._submit(request, op, (model.model_id, msg.seq_id), make)

    async def _submit_optim_step(self, request: httpx.Request, data: dict[str, Any]) -> httpx.Response:
        step = types.OptimStepRequest.model_validate(data)
        return await self._submit_seq(request, "optim_step", step.model_id, step.seq_id, step)

    async def _submit_save_state(self, request: httpx.Request, data: dict[str, Any]) -> httpx.Response:
        save = types.SaveWeightsRequest.model_validate(data)
        return await self._submit_seq(request, "save_state", save.model_id, save.seq_id, save)

    async def _submit_save_for_sampler(self, request: httpx.Request, data: dict[str, Any]) -> httpx.Response:
        save = types.SaveWeightsForSamplerRequest.model_validate(data)
        return await self._submit_seq(request, "save_weights_for_sampler", save.model_id, save.seq_id, save)

    async def _submit_save_external(self, request: httpx.Request, data: dict[str, Any]) -> httpx.Response:
        save = types.SaveWeightsExternalRequest.model_validate(data)
        return await self._submit_seq(request, "save_weights_external", save.model_id, save.seq_id, save)

    async def _submit_seq(self, request: httpx.Request, op: str, model_id: str, seq_id: int | None,
                          payload: Any) -> httpx.Response:
        model = self.models.get(model_id)
        if model is None:
            return _json({"detail": f"model {model_id} not found"}, status=404)
        if seq_id is None:
            return _json({"detail": "seq_id is required"}, status=400)

        def make(fault: FaultSpec | None) -> _Req:
            req = _Req(uuid.uuid4().hex, op, model_id, seq_id, payload, fault)
            self._enqueue(model, req)
            return req

        return await self._submit(request, op, (model_id, seq_id), make)

    def _run_training_op(self, model: _Model, req: _Req) -> tuple[str, Any, dict[str, Any]]:
        if req.op in ("forward", "forward_backward"):
            return self._run_forward_backward(model, req.payload, backward=req.op == "forward_backward")
        if req.op == "optim_step":
            return self._run_optim_step(model, req.payload)
        if req.op == "save_state":
            return self._run_save(model, req.payload, "weights")
        if req.op == "save_weights_for_sampler":
            return self._run_save(model, req.payload, "sampler_weights")
        if req.op == "save_weights_external":
            return self._run_save_external(model, req.payload)
        if req.op == "load_weights":
            load: types.LoadWeightsRequest = req.payload
            self._restore(model, self._load_record(load.path), load.path, load.optimizer)
            return "json", {"type": "load_weights", "path": load.path, "model_id": model.model_id}, {}
        raise RuntimeError(f"unexpected op {req.op}")

    def _decode_datums(self, msg: pb.ForwardBackwardRequest) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        if msg.loss_fn != "cross_entropy":
            raise _UserError(f"Loss function {msg.loss_fn!r} is not supported by the fake (cross_entropy only).")
        datums = []
        for index, datum in enumerate(msg.data):
            parts = []
            for chunk in datum.model_input:
                if chunk.WhichOneof("chunk") != "encoded_text":
                    raise _UserError("Only token (encoded_text) model inputs are supported by the fake.")
                parts.append(np.frombuffer(chunk.encoded_text.tokens, dtype="<i4").astype(np.int64))
            tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
            if "target_tokens" not in datum.loss_fn_inputs:
                raise _UserError(f"datum {index}: cross_entropy needs loss_fn_inputs['target_tokens'].")
            targets = _decode_tensor(datum.loss_fn_inputs["target_tokens"]).astype(np.int64)
            if "weights" in datum.loss_fn_inputs:
                weights = _decode_tensor(datum.loss_fn_inputs["weights"]).astype(np.float64)
            else:
                weights = np.ones(targets.shape, dtype=np.float64)
            if targets.ndim != 1 or weights.shape != targets.shape:
                raise _UserError(f"datum {index}: target_tokens and weights must both have shape (N,).")
            if len(targets) != len(tokens):
                raise _UserError(f"datum {index}: target_tokens has {len(targets)} entries but the model "
                                 f"input has {len(tokens)} tokens.")
            if len(tokens) > self.config.max_context:
                raise _UserError(f"datum {index}: sequence of {len(tokens)} tokens exceeds the maximum "
                                 f"context length {self.config.max_context}.")
            for name, arr in (("model input", tokens), ("target_tokens", targets)):
                if len(arr) and (arr.min() < 0 or arr.max() >= VOCAB_SIZE):
                    raise _UserError(f"datum {index}: {name} has a token id outside [0, {VOCAB_SIZE}).")
            datums.append((tokens, targets, weights))
        return datums

    def _run_forward_backward(self, model: _Model, msg: pb.ForwardBackwardRequest, *, backward: bool
                              ) -> tuple[str, Any, dict[str, Any]]:
        datums = self._decode_datums(msg)
        out = pb.ForwardBackwardOutput()
        out.loss_fn_output_type = "ArrayRecord"
        record = out.loss_fn_outputs.add()
        record.num_datums = len(datums)
        logprob_arrays: list[np.ndarray] = []
        loss_sum = 0.0
        grad = np.zeros(self.config.buckets) if backward else None
        for tokens, targets, weights in datums:
            buckets = self._buckets(model.base_model, tokens, targets)
            z = self._logits(model.base_model, model.params, buckets)
            logprobs = -_softplus(-z)
            loss_sum += float(np.sum(weights * -logprobs))
            logprob_arrays.append(logprobs.astype("<f4"))
            if grad is not None:  # d(-w * logsigmoid(z))/dz = -w * sigmoid(-z)
                np.add.at(grad, buckets, -weights / (1.0 + np.exp(z)))
        field_ = record.fields["logprobs"]
        field_.dtype = pb.DTYPE_FLOAT32
        field_.data = b"".join(a.tobytes() for a in logprob_arrays)
        field_.offsets = np.cumsum([0] + [a.nbytes for a in logprob_arrays]).astype("<i8").tobytes()
        out.metrics["loss:sum"] = loss_sum
        info: dict[str, Any] = {"fingerprint": _fingerprint_arrays(t for _, t, _ in datums),
                                "datums": len(datums), "loss_sum": loss_sum}
        if grad is not None:
            assert model.grad is not None
            model.grad += grad
            model.pending.extend(t for _, t, _ in datums)
            model.pending_weight += float(sum(float(w.sum()) for _, _, w in datums))
        return "proto", out.SerializeToString(), info

    def _run_optim_step(self, model: _Model, step: types.OptimStepRequest) -> tuple[str, Any, dict[str, Any]]:
        params = step.optim_params
        if not isinstance(params, types.AdamParams):
            raise _UserError("Only AdamParams are supported by the fake (the model was created with adamw).")
        assert model.grad is not None
        grad = model.grad
        grad_norm = float(np.linalg.norm(grad))
        if params.grad_clip_norm > 0 and grad_norm > params.grad_clip_norm:
            grad = grad * (params.grad_clip_norm / grad_norm)
        lr = float(params.learning_rate) * self.config.lr_multiplier
        model.t += 1
        model.m = params.beta1 * model.m + (1.0 - params.beta1) * grad
        model.v = params.beta2 * model.v + (1.0 - params.beta2) * grad * grad
        m_hat = model.m / (1.0 - params.beta1 ** model.t)
        v_hat = model.v / (1.0 - params.beta2 ** model.t)
        if params.weight_decay:
            model.params = model.params * (1.0 - lr * params.weight_decay)
        model.params = model.params - lr * m_hat / (np.sqrt(v_hat) + params.eps)
        fingerprint = _fingerprint_arrays(model.pending) if model.pending else None
        model.lineage.append({"index": len(model.lineage) + 1, "adam_step": model.t, "model_id": model.model_id,
                              "fingerprint": fingerprint, "datums": len(model.pending),
                              "weight": model.pending_weight, "learning_rate": float(params.learning_rate)})
        model.grad = np.zeros(self.config.buckets)
        model.pending, model.pending_weight = [], 0.0
        metrics = {"grad_norm:mean": grad_norm, "learning_rate:mean": float(params.learning_rate)}
        return "json", {"metrics": metrics}, {"fingerprint": fingerprint}

    def _run_save(self, model: _Model, save: Any, kind: str) -> tuple[str, Any, dict[str, Any]]:
        name = save.path
        if name is None:
            if kind == "weights":
                name = f"{model.t:06d}"
            else:  # save_weights_and_get_sampling_client: an ephemeral sampler, no checkpoint
                session = self._new_sampling_session(model.base_model, None, model.params.copy())
                return "json", {"type": "save_weights_for_sampler", "sampling_session_id": session.id}, {}
        if not name or "/" in name:
            raise _UserError(f"Invalid checkpoint name {name!r}.")
        path = f"tinker://{model.model_id}/{kind}/{name}"
        file = _checkpoint_file(self.state_dir, path)
        if file.exists() and not getattr(save, "overwrite", False):
            raise _UserError(f"Checkpoint {path} already exists.")
        record: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT, "path": path, "kind": kind, "name": name, "model_id": model.model_id,
            "base_model": model.base_model, "lora_rank": model.lora_rank, "created_at": time.time(),
            "user_metadata": getattr(save, "user_metadata", None), "origin": model.origin,
            "run_user_metadata": model.user_metadata,
            "params": model.params.tolist(), "lineage": model.lineage,
            "optimizer": ({"m": model.m.tolist(), "v": model.v.tolist(), "t": model.t}
                          if kind == "weights" else None),
        }
        _atomic_write_json(file, record)
        response_type = "save_weights" if kind == "weights" else "save_weights_for_sampler"
        return "json", {"type": response_type, "path": path}, {"path": path}

    def _run_save_external(self, model: _Model, save: types.SaveWeightsExternalRequest
                           ) -> tuple[str, Any, dict[str, Any]]:
        if save.age_encryption_recipients:
            raise _UserError("age encryption of external weights is not supported by the fake.")
        if not _safe_name(save.path):
            raise _UserError(f"Invalid external weights name {save.path!r}.")
        path = f"tinker://{model.model_id}/external_weights/{save.path}"
        folder = _external_dir(self.state_dir, path)
        if folder.exists():
            raise _UserError(f"Checkpoint {path} already exists.")
        weights = _safetensors_bytes(
            {ADAPTER_TENSOR: model.params.astype(np.float32)},
            {"format": "pt", "base_model": model.base_model, "lora_rank": str(model.lora_rank),
             "tinker_path": path})
        config = {"base_model_name_or_path": model.base_model, "peft_type": "LORA", "task_type": "CAUSAL_LM",
                  "r": model.lora_rank, "lora_alpha": model.lora_rank, "lora_dropout": 0.0, "bias": "none",
                  "target_modules": "all-linear", "tinker_path": path}
        files = {ADAPTER_WEIGHTS_FILE: weights,
                 ADAPTER_CONFIG_FILE: (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()}
        staging = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}.tmp")
        for name, data in files.items():
            _atomic_write_bytes(staging / name, data)
        os.replace(staging, folder)  # the checkpoint appears whole
        size = sum(len(data) for data in files.values())
        return "json", {"type": "save_weights_external", "path": path, "size_bytes": size}, {"path": path}

    def _external_weights_urls(self, route: str) -> httpx.Response:
        # training_runs/<run>/checkpoints/external_weights/<name>/external_weights_urls
        parts = route.split("/")
        if len(parts) != 6 or parts[2] != "checkpoints" or parts[3] != "external_weights":
            return _json({"detail": "external_weights_urls needs an external weights checkpoint"}, status=400)
        run, name = urllib.parse.unquote(parts[1]), urllib.parse.unquote(parts[4])
        path = f"tinker://{run}/external_weights/{name}"
        try:
            files = external_files(self.state_dir, path)
        except (FileNotFoundError, _UserError):
            return _json({"detail": f"Checkpoint {path} not found"}, status=404)
        server = self._export()
        expires = int(time.time()) + self.config.url_ttl_seconds
        token = server.register(files)
        urls = {file: server.url(token, file, expires) for file in files}
        return _json({"urls": urls,
                      "expires": datetime.datetime.fromtimestamp(expires, datetime.UTC).isoformat()})

    def _export(self) -> _ExportServer:
        with self._export_lock:
            if self._export_server is None:
                self._export_server = _ExportServer(self)
            return self._export_server

    # ---- sampling ------------------------------------------------------------------------------------------

    def _new_sampling_session(self, base_model: str, model_path: str | None, params: np.ndarray
                              ) -> _SamplingSession:
        session = _SamplingSession(f"sampler-{uuid.uuid4().hex}", base_model, model_path, params)
        self.sampling_sessions[session.id] = session
        return session

    def _create_sampling_session(self, data: dict[str, Any]) -> httpx.Response:
        create = types.CreateSamplingSessionRequest.model_validate(data)
        try:
            if create.model_path:
                record = self._load_record(create.model_path)
                params = np.asarray(record["params"], dtype=np.float64)
                session = self._new_sampling_session(record["base_model"], create.model_path, params)
            elif create.base_model:
                self._check_base_model(create.base_model)
                session = self._new_sampling_session(create.base_model, None, np.zeros(self.config.buckets))
            else:
                raise _UserError("model_path or base_model is required.")
        except _UserError as exc:
            status = 404 if "not found" in str(exc) else 400
            return _json({"detail": str(exc)}, status=status)
        return _json({"type": "create_sampling_session", "sampling_session_id": session.id})

    async def _submit_sample(self, request: httpx.Request, data: dict[str, Any]) -> httpx.Response:
        sample = types.SampleRequest.model_validate(data)
        if sample.sampling_session_id is not None:
            session = self.sampling_sessions.get(sample.sampling_session_id)
            if session is None:
                return _json({"detail": f"sampler {sample.sampling_session_id} not found"}, status=404)
        else:
            return _json({"detail": "the fake needs a sampling_session_id"}, status=400)
        key = (session.id, sample.seq_id)
        ids = [f"{session.id}:{sample.seq_id}:{i}" for i in range(sample.num_samples)]

        def make(fault: FaultSpec | None) -> _Req:
            req = _Req(uuid.uuid4().hex, "sample", None, sample.seq_id, sample, fault)
            self._schedule(req, lambda: self._run_sample(session, sample))
            return req

        return await self._submit(request, "sample", key, make, extra={"sample_sequence_ids": ids})

    def _run_sample(self, session: _SamplingSession, sample: types.SampleRequest
                    ) -> tuple[str, Any, dict[str, Any]]:
        if sample.prompt_alt_tokens_k or sample.target_prompt_logprobs is not None:
            raise _UserError("prompt_alt_tokens_k and target_prompt_logprobs are not supported by the fake.")
        prompt = np.asarray(sample.prompt.to_ints(), dtype=np.int64)
        if len(prompt) == 0:
            raise _UserError("The prompt is empty.")
        if len(prompt) > self.config.max_context:
            raise _UserError(f"Prompt of {len(prompt)} tokens exceeds the maximum context length.")
        params_ = sample.sampling_params
        stop = params_.stop
        if stop is None or isinstance(stop, str) or (stop and isinstance(list(stop)[0], str)):
            stop_tokens = {EOS_TOKEN}
        else:
            stop_tokens = {int(t) for t in stop}  # type: ignore[arg-type]
        max_tokens = params_.max_tokens or self.config.max_sample_tokens
        candidates = np.unique(np.concatenate([prompt, np.asarray(sorted(stop_tokens) or [EOS_TOKEN])]))
        response = pb.SampleResponse()
        seed = params_.seed if params_.seed is not None else self.config.seed
        for index in range(sample.num_samples):
            rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(sample.seq_id or 0) & 0xFFFFFFFF, index])
            prev = int(prompt[-1])
            tokens: list[int] = []
            logprobs: list[float] = []
            reason = pb.STOP_REASON_LENGTH
            for _ in range(max_tokens):
                buckets = self._buckets(session.base_model, np.full(len(candidates), prev), candidates)
                logits = self._logits(session.base_model, session.params, buckets)
                log_norm = logits - np.logaddexp.reduce(logits)
                if params_.temperature <= 0:
                    choice = int(np.argmax(logits))
                else:
                    scaled = logits / params_.temperature
                    probs = np.exp(scaled - np.logaddexp.reduce(scaled))
                    choice = int(rng.choice(len(candidates), p=probs / probs.sum()))
                token = int(candidates[choice])
                tokens.append(token)
                logprobs.append(float(log_norm[choice]))
                prev = token
                if token in stop_tokens:
                    reason = pb.STOP_REASON_STOP
                    break
            seq = response.sequences.add()
            seq.stop_reason = reason
            seq.tokens = np.asarray(tokens, dtype="<i4").tobytes()
            seq.logprobs = np.asarray(logprobs, dtype="<f4").tobytes()
        if sample.prompt_logprobs:
            scored = np.full(len(prompt), np.nan, dtype=np.float64)
            if len(prompt) > 1:
                buckets = self._buckets(session.base_model, prompt[:-1], prompt[1:])
                scored[1:] = -_softplus(-self._logits(session.base_model, session.params, buckets))
            if sample.prompt_logprobs_last_n:
                scored[: len(prompt) - sample.prompt_logprobs_last_n] = np.nan
            response.prompt_logprobs = scored.astype("<f4").tobytes()
        return "proto", response.SerializeToString(), {"sampler": session.id}


class _ExportServer:
    """Serves exported adapter files over plain HTTP on loopback, behind signed, expiring URLs."""

    def __init__(self, fake: FakeTinker) -> None:
        self._fake = fake
        self._secret = os.urandom(32)
        self._tokens: dict[str, dict[str, Path]] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                server.serve(self)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet; URLs carry signatures
                return None

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-tinker-export", daemon=True)
        self._thread.start()

    def register(self, files: dict[str, Path]) -> str:
        token = uuid.uuid4().hex
        self._tokens[token] = dict(files)
        return token

    def _sign(self, token: str, file: str, expires: int) -> str:
        return hmac.new(self._secret, f"{token}/{file}:{expires}".encode(), hashlib.sha256).hexdigest()

    def url(self, token: str, file: str, expires: int) -> str:
        query = urllib.parse.urlencode({"expires": expires, "sig": self._sign(token, file, expires)})
        return f"http://127.0.0.1:{self.port}/{token}/{urllib.parse.quote(file)}?{query}"

    def serve(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        parsed = urllib.parse.urlsplit(handler.path)
        token, _, file = parsed.path.lstrip("/").partition("/")
        file = urllib.parse.unquote(file)
        query = urllib.parse.parse_qs(parsed.query)
        expires_raw, sig = query.get("expires", [""])[0], query.get("sig", [""])[0]
        entry = {"token": token, "file": file, "time": time.monotonic()}
        self._fake.downloads.append(entry)
        local = self._tokens.get(token, {}).get(file)
        if local is None:
            entry["status"] = 404
            return self._reply(handler, 404, b"no such file\n")
        if not (expires_raw.isdigit() and hmac.compare_digest(sig, self._sign(token, file, int(expires_raw)))):
            entry["status"] = 403
            return self._reply(handler, 403, b"signature does not match\n")
        if int(expires_raw) < time.time():
            entry["status"] = 403
            return self._reply(handler, 403, b"request has expired\n")
        transport, result, _ = self._fake._faults.attempt("download", (token, file))
        fault = transport or result
        if fault is not None:
            entry["fault"] = fault.kind
            if fault.kind in ("connection", "timeout"):
                handler.close_connection = True
                return None
            status = _http_status(fault.kind) or 500
            entry["status"] = status
            return self._reply(handler, status, (fault.message or f"injected {fault.kind} fault").encode())
        size = local.stat().st_size
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(size))
        handler.end_headers()
        with open(local, "rb") as source:
            shutil.copyfileobj(source, handler.wfile)
        entry["status"], entry["bytes"] = 200, size
        return None

    @staticmethod
    def _reply(handler: http.server.BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "text/plain")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def _surface_connection_error(request: httpx.Request, *, timeout: bool) -> None:
    """Raise a connection error that reaches the caller at once.

    The SDK's HTTP layer retries any exception from the transport up to 10 times with exponential backoff,
    except its internal ``_AuthFlowError``, whose wrapped error it re-raises as is. We wrap the very
    ``APIConnectionError`` (or ``APITimeoutError``) the SDK would have raised after its retries, marked so the
    fake holder tells ``execute_with_retries`` not to retry it either.
    """
    error: tinker.APIConnectionError = (tinker.APITimeoutError(request=request) if timeout
                                        else tinker.APIConnectionError(request=request))
    setattr(error, _SURFACE_MARK, True)
    if _AuthFlowError is None:  # pragma: no cover
        raise httpx.ConnectError("injected connection fault", request=request)
    raise _AuthFlowError(error)


def _decode_tensor(msg: pb.Tensor) -> np.ndarray:
    dtypes = {pb.DTYPE_FLOAT32: "<f4", pb.DTYPE_INT64: "<i8", pb.DTYPE_INT32: "<i4"}
    if msg.dtype not in dtypes:
        raise _UserError(f"Unsupported tensor dtype {msg.dtype}.")
    if msg.WhichOneof("encoding") != "dense":
        raise _UserError("Sparse loss_fn_inputs are not supported by the fake.")
    arr = np.frombuffer(msg.dense, dtype=dtypes[msg.dtype])
    shape = list(msg.shape)
    return arr.reshape(shape) if shape else arr


# --------------------------------------------------------------------------------------------------------------
# Factory for make_service_client (in-process or in a worker subprocess)
# --------------------------------------------------------------------------------------------------------------

_instances: dict[tuple[int, str], FakeTinker] = {}
_instances_lock = threading.Lock()


def get_fake(config: FakeTinkerConfig | dict[str, Any] | str | None = None) -> FakeTinker:
    """This process's ``FakeTinker`` for ``config`` (one per distinct config, made on first use)."""
    canonical = FakeTinkerConfig.from_json(config).to_json()
    key = (os.getpid(), canonical)
    with _instances_lock:
        fake = _instances.get(key)
        if fake is None:
            fake = _instances[key] = FakeTinker(canonical)
        return fake


def make_fake_service_client(config: FakeTinkerConfig | dict[str, Any] | str | None = None
                             ) -> tinker.ServiceClient:
    """The factory named by the ``tinker_fake`` setting: a real ``tinker.ServiceClient`` on this process's fake.

    Set ``state_dir`` in the config when checkpoints must outlive the process.
    """
    return get_fake(config).service_client()
