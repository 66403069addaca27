"""`tuneq run` (the embedded stack: Redis, API, worker) keeps its processes up as compose or systemd would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import TEST_SETTINGS
from tests.support import ROOT, free_port, wait_until


def _children(pid: int) -> dict[int, str]:
    """The live child processes of `pid`: {pid: command line}."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        if int(ppid) == pid and state != "Z":
            found[int(stat.parent.name)] = cmdline
    return found


def _child(pid: int, marker: str) -> int | None:
    return next((child for child, cmdline in _children(pid).items() if marker in cmdline), None)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _key(log: Path) -> str | None:
    lines = log.read_text(errors="replace").splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.startswith("Your API key"):
            return lines[i + 1].strip()
    return None


def _runs_a_job(client: httpx.Client) -> bool:
    job = client.post("/v1/jobs", json={"kind": "test", "spec": {"steps": 2}})
    if job.status_code != 201:
        return False
    return bool(client.get(f"/v1/jobs/{job.json()['id']}/wait", params={"timeout": 60}).json()["status"]
                == "succeeded")


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_tuneq_run_restarts_what_dies_and_stops_everything_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, **TEST_SETTINGS, "TUNEQ_VAR_DIR": str(tmp_path / "var"), "TUNEQ_PORT": str(port),
           "PYTHONUNBUFFERED": "1"}
    for name in ("TUNEQ_DATABASE_URL", "TUNEQ_BROKER_URL"):  # everything embedded, under the var dir
        env.pop(name, None)
    log = tmp_path / "run.log"
    run = subprocess.Popen([sys.executable, "-m", "app.cli", "run"], cwd=ROOT, env=env, stdout=open(log, "wb"),
                           stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    seen: set[int] = set()
    try:
        key = wait_until(lambda: _key(log), 90, "tuneq run to print the first API key")
        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=90)
        wait_until(lambda: _answers(base), 60, "the API and its broker to be ready")
        assert _runs_a_job(client)

        worker = wait_until(lambda: _child(run.pid, "celery"), 30, "the worker process")
        api = _child(run.pid, "app.cli api")
        assert api is not None
        seen |= {worker, api}
        os.killpg(worker, signal.SIGKILL)  # the whole worker: its main process and its pool
        new_worker = wait_until(lambda: (_child(run.pid, "celery") or worker) != worker and
                                _child(run.pid, "celery"), 60, "a new worker")
        seen.add(new_worker)
        assert _runs_a_job(client)

        os.killpg(api, signal.SIGKILL)
        wait_until(lambda: (_child(run.pid, "app.cli api") or api) != api, 60, "a new API process")
        wait_until(lambda: _answers(base), 60, "the new API to answer")
        seen |= set(_children(run.pid))
        assert _runs_a_job(client)
        assert "restarting the worker" in log.read_text() and "restarting the API" in log.read_text()

        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=90) == 0, log.read_text()[-3000:]
        assert not any(_alive(pid) for pid in seen), log.read_text()[-3000:]
    finally:
        for pid in [*_children(run.pid), *seen]:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if run.poll() is None:
            run.kill()
            run.wait()
