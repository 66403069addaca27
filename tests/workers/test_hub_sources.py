"""workers/sources: Hugging Face Hub datasets (offline, unreachable and answered errors, names).

Self-contained: every data file is made here under tmp_path; nothing needs the live stack or the network."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.workers.support import source_error
from workers.sources import (
    SourceError,
    iter_hub_rows,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


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
    err = source_error(iter_hub_rows("org/name", config=None, split="train", revision=None, token=None))
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
    err = source_error(iter_hub_rows("org/name", config=None, split="train", revision=None, token="hf_SECRETxyz123456"))
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
        err = source_error(iter_hub_rows("org/name", config=None, split="train", revision=None, token=None,
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
    err = source_error(iter_hub_rows(name, config=None, split="train", revision=None, token=None))
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
        err = source_error(iter_hub_rows("org/private", config=None, split="train", revision=None,
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
