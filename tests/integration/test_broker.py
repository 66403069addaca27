"""The broker side of delivery, on a private Redis server this module may restart: a Redis restart mid-job, the
order in which wake-ups are served, and an operator's key prefix and task routes (TUNEQ_CELERY_OPTIONS, read by
app/queue.py in the API and the workers alike)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from kombu.exceptions import OperationalError

from app.queue import WakeupSender
from app.settings import get_settings
from tests.conftest import TEST_SETTINGS
from tests.support import ROOT, Stack, free_port, wait_until

LONG = {"steps": 40, "step_seconds": 0.25}  # ten seconds of a test job


def _redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    from app.embedded import redis_executable

    return redis_executable()


@dataclass
class Private:
    """An API on its own SQLite database and its own Redis server, with no worker until a test starts one."""

    stack: Stack
    var: Path
    redis_port: int
    redis: subprocess.Popen[bytes]
    key: str

    @property
    def broker_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def start_redis(self) -> None:
        # Durable like the compose service: a restart keeps the queues and the unacknowledged messages.
        self.redis = subprocess.Popen(
            [_redis_server(), "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--dir", str(self.var), "--logfile", str(self.var / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        wait_until(self._answers, 10, "the private Redis to answer")

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis(port=self.redis_port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def client(self) -> httpx.Client:
        return _client(self.stack, self.key)

    def sender(self) -> WakeupSender:
        """A wake-up sender of this test process on the private broker, with no operator's Celery options."""
        return WakeupSender(get_settings().model_copy(update={"broker_url": self.broker_url,
                                                              "celery_options": {}}))


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _client(stack: Stack, key: str) -> httpx.Client:
    return httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=90)


def _service(var: Path, redis_port: int, **extra: str) -> tuple[Stack, str]:
    """A tuneq service on its own SQLite database in `var` (migrated, with one team's API key) and the Redis on
    `redis_port`, with no operator's Celery options unless `extra` (added to its environment) sets some; its API
    is not started yet."""
    env = {**os.environ, **TEST_SETTINGS, "TUNEQ_DATABASE_URL": f"sqlite:///{var / 'tuneq.db'}",
           "TUNEQ_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0", "TUNEQ_VAR_DIR": str(var),
           "TUNEQ_CELERY_OPTIONS": "{}", **extra}
    _cli(env, "migrate")
    key = _cli(env, "keys", "create", "--team", "broker").strip().splitlines()[-1]
    return Stack(env=env, base_url=f"http://127.0.0.1:{free_port()}", logs=var), key


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Private]:
    var = tmp_path_factory.mktemp("broker")
    port = free_port()
    stack, key = _service(var, port)
    p = Private(stack=stack, var=var, redis_port=port, redis=None, key=key)  # type: ignore[arg-type]
    p.start_redis()
    try:
        p.stack.start_api()
        yield p
    finally:
        p.stack.stop()
        p.redis.terminate()
        p.redis.wait(timeout=10)


@pytest.fixture
def pstack(private: Private) -> Iterator[Stack]:
    """The private stack; the workers a test starts are stopped after it."""
    yield private.stack
    private.stack.stop_workers()


@contextmanager
def _operator(private: Private, var: Path, options: dict[str, Any]) -> Iterator[tuple[Stack, httpx.Client]]:
    """tuneq as an operator runs it with `TUNEQ_CELERY_OPTIONS` set to `options`: an API of its own, and the
    workers (workers.celery_app) a test starts with `Stack.start_worker`, every process with that environment,
    on the private Redis. Its database is its own too, so the private API's reaper, which has no such options,
    never re-sends the wake-up of one of its jobs."""
    stack, key = _service(var, private.redis_port, TUNEQ_CELERY_OPTIONS=json.dumps(options))
    try:
        stack.start_api()
        with _client(stack, key) as client:
            yield stack, client
    finally:
        stack.stop()


def _log(proc: subprocess.Popen[bytes]) -> str:
    return proc.log_path.read_text(errors="replace")  # type: ignore[attr-defined]


def _claimed_by(proc: subprocess.Popen[bytes], job_id: str) -> bool:
    return f"job {job_id}: claimed" in _log(proc)


def _submit(client: httpx.Client, spec: dict[str, Any]) -> str:
    r = client.post("/v1/jobs", json={"kind": "test", "spec": spec})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _wait(client: httpx.Client, job_id: str) -> dict[str, Any]:
    return dict(client.get(f"/v1/jobs/{job_id}/wait", params={"timeout": 60}).json())


def test_a_redis_restart_mid_job_kills_neither_the_job_nor_the_workers(private: Private, pstack: Stack) -> None:
    """Each worker runs one job. The second has a free process slot, so it is waiting on the broker for more
    work when Redis goes away: the case that made kombu's restore path take every such worker down."""
    with private.client() as client:
        one = pstack.start_worker(concurrency=1, queues="test")
        first = _submit(client, LONG)
        wait_until(lambda: _claimed_by(one, first), 30, "the first worker to run the first job")
        two = pstack.start_worker(concurrency=2, queues="test")  # the first worker is full: the second job goes here
        second = _submit(client, LONG)
        wait_until(lambda: _claimed_by(two, second), 30, "the second worker to run the second job")

        sender = private.sender()  # long-lived, like the API's and the reaper's
        before = sender.instance()
        private.redis.terminate()
        private.redis.wait(timeout=10)
        wait_until(lambda: all("Connection to broker lost" in _log(w) for w in (one, two)), 30,
                   "both workers to notice the broker is gone")
        with pytest.raises(OperationalError):  # app.queue.broker_instance() turns this into None
            sender.instance()
        private.start_redis()
        assert sender.instance() not in (None, before)  # it reconnects, and sees a new server

        for job_id in (first, second):
            done = _wait(client, job_id)
            assert done["status"] == "succeeded", done
            assert done["attempt"] == 1 and done["result"]["attempt"] == 1  # it ran on, never restarted
        for worker in (one, two):
            assert worker.poll() is None, _log(worker)
            assert "Unrecoverable error" not in _log(worker)

        # Both workers still serve: three jobs at once need the one slot of the first and both of the second.
        short = {"steps": 12, "step_seconds": 0.25}
        after = [_submit(client, short) for _ in range(3)]
        assert all(_wait(client, job_id)["status"] == "succeeded" for job_id in after)
        for worker in (one, two):
            assert any(_claimed_by(worker, job_id) for job_id in after), _log(worker)
    # The running jobs' messages were acknowledged once they finished, across the reconnection: none is left
    # for Redis to deliver again when its visibility timeout runs out.
    broker = redis.Redis(port=private.redis_port)
    wait_until(lambda: broker.hlen("unacked") == 0, 20, "no unacknowledged message to remain")


def test_a_resumed_wakeup_is_served_before_jobs_that_never_started(private: Private, pstack: Stack) -> None:
    with private.client() as client:
        pstack.start_worker(concurrency=1, queues="test")
        busy = _submit(client, {"steps": 12, "step_seconds": 0.25})
        wait_until(lambda: client.get(f"/v1/jobs/{busy}").json()["status"] == "running", 30, "a busy worker")
        waiting = [_submit(client, {"steps": 1}) for _ in range(3)]  # their wake-ups queue up, in order
        handed_back = _submit(client, {"steps": 1})
        # What the reaper sends for a job a lost or stopping worker handed back.
        private.sender().send(handed_back, "test", resumed=True)

        started = {}
        for job_id in [busy, *waiting, handed_back]:
            done = _wait(client, job_id)
            assert done["status"] == "succeeded", done
            started[job_id] = datetime.fromisoformat(done["started_at"])
    assert started[handed_back] < min(started[job_id] for job_id in waiting)


def test_jobs_run_with_an_operators_key_prefix(private: Private, tmp_path: Path) -> None:
    prefix = "shared-redis:"
    with _operator(private, tmp_path, {"broker_transport_options": {"global_keyprefix": prefix}}) as (
        stack, client
    ):
        worker = stack.start_worker(concurrency=1, queues="test")
        job_id = _submit(client, {"steps": 2})
        done = _wait(client, job_id)
        assert done["status"] == "succeeded", done
        assert _claimed_by(worker, job_id)
        assert redis.Redis(port=private.redis_port).exists(f"{prefix}_kombu.binding.test")  # the worker's keys
        # The API's wake-up went under the prefix too: none waits unread in the unprefixed `test` lists.
        assert private.sender().waiting("test") == 0


def test_jobs_run_with_an_operators_task_route(private: Private, tmp_path: Path) -> None:
    with _operator(private, tmp_path, {"task_routes": {"tuneq.run_job": {"queue": "tuneq-jobs"}}}) as (
        stack, client
    ):
        stack.start_worker(concurrency=1, queues="test")  # where the job would run without the route
        routed = stack.start_worker(concurrency=1, queues="tuneq-jobs")
        job_id = _submit(client, {"steps": 2})
        done = _wait(client, job_id)
        assert done["status"] == "succeeded", done
        assert _claimed_by(routed, job_id), _log(routed)
