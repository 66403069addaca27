"""Delivery under faults: workers killed or paused mid-job, and a broker that is down at submit."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import httpx
import pytest

from tests.support import Stack, wait_until

TERMINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture
def own_workers(stack: Stack) -> Iterator[Stack]:
    """Stop the shared worker so a test decides exactly which workers run; restore it after."""
    stack.stop_workers()
    yield stack
    stack.stop_workers()
    stack.start_worker()


def _events(client: httpx.Client, job_id: str) -> list[dict]:
    return client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]


def _leases(job_id: str) -> dict[int, int | None]:
    from sqlalchemy import select

    from app.db import session_scope
    from app.models import JobEvent

    with session_scope() as session:
        rows = session.execute(select(JobEvent.seq, JobEvent.lease_token).where(JobEvent.job_id == job_id))
        return dict(rows.tuples().all())


def _running_past(client: httpx.Client, job_id: str, step: int) -> bool:
    job = client.get(f"/v1/jobs/{job_id}").json()
    return job["status"] == "running" and (job["progress"] or {}).get("done", 0) >= step


def test_killed_worker_job_finishes_exactly_once_on_a_new_worker(own_workers: Stack, client: httpx.Client) -> None:
    first = own_workers.start_worker(concurrency=1)
    job = client.post("/v1/jobs", json={"kind": "test", "spec": {"steps": 12, "step_seconds": 0.25}}).json()
    wait_until(lambda: _running_past(client, job["id"], 3), 30, "the job to be mid-run")

    own_workers.kill_worker(first)  # kill -9, the whole worker process group
    own_workers.start_worker(concurrency=1)

    done = client.get(f"/v1/jobs/{job['id']}/wait", params={"timeout": 60}).json()
    assert done["status"] == "succeeded", done
    # A lost worker is the infrastructure's failure, not the job's: no attempt is spent.
    assert done["attempt"] == 1 and done["preemptions"] == 1
    assert done["result"] == {"steps": 12, "attempt": 1}
    events = _events(client, job["id"])
    types = [e["type"] for e in events]
    assert sum(t in TERMINAL for t in types) == 1 and types[-1] == "succeeded"
    assert [e["data"]["reason"] for e in events if e["type"] == "preempted"] == ["worker_lost"]


def test_paused_worker_loses_its_lease_and_its_late_writes_are_refused(
    own_workers: Stack, client: httpx.Client
) -> None:
    paused = own_workers.start_worker(concurrency=1)
    job = client.post("/v1/jobs", json={"kind": "test", "spec": {"steps": 16, "step_seconds": 0.25}}).json()
    wait_until(lambda: _running_past(client, job["id"], 2), 30, "the job to be mid-run")

    own_workers.kill_worker(paused, signal.SIGSTOP)
    own_workers.start_worker(concurrency=1)
    wait_until(lambda: client.get(f"/v1/jobs/{job['id']}").json()["preemptions"] == 1, 30, "a takeover")
    own_workers.kill_worker(paused, signal.SIGCONT)  # it wakes up believing it still owns the job

    done = client.get(f"/v1/jobs/{job['id']}/wait", params={"timeout": 60}).json()
    assert done["status"] == "succeeded" and done["attempt"] == 1
    events = _events(client, job["id"])
    takeover = max(e["seq"] for e in events if e["type"] == "running")
    leases = _leases(job["id"])  # seq → the lease that wrote the event
    assert all(leases[e["seq"]] == leases[takeover] for e in events if e["seq"] > takeover)  # no zombie writes
    assert sum(e["type"] in TERMINAL for e in events) == 1
    log = paused.log_path.read_text()  # type: ignore[attr-defined]
    wait_until(lambda: "lease lost" in paused.log_path.read_text(), 10, "the paused worker to stop")  # type: ignore[attr-defined]
    assert "succeeded" not in log.split("lease lost")[-1].split("\n")[0]


def test_job_submitted_while_the_broker_is_down_is_not_lost(own_workers: Stack, client: httpx.Client) -> None:
    """The job row is the outbox: the reaper sends the wake-up once the broker is back."""
    import redis as redis_lib

    url = own_workers.env["TUNEQ_BROKER_URL"]
    if not url.startswith("redis+socket://"):
        pytest.skip("needs the embedded broker, which the test may stop and restart")
    from pathlib import Path

    from app.embedded import start_redis
    from tests.support import EMBEDDED_REDIS

    sock = Path(url.removeprefix("redis+socket://"))
    redis_lib.Redis(unix_socket_path=str(sock)).shutdown(nosave=True)
    try:
        r = client.post("/v1/jobs", json={"kind": "test"})
        assert r.status_code == 201, r.text
        job = r.json()
    finally:
        proc = start_redis(sock, Path(own_workers.env["TUNEQ_VAR_DIR"]) / "redis")
        if proc is not None:
            EMBEDDED_REDIS.append(proc)
    own_workers.start_worker(concurrency=1)
    done = client.get(f"/v1/jobs/{job['id']}/wait", params={"timeout": 60}).json()
    assert done["status"] == "succeeded", done


def test_sigterm_hands_the_job_back_without_spending_an_attempt(own_workers: Stack, client: httpx.Client) -> None:
    """A deploy: the stopping worker's job is handed back at once and resumes on another worker."""
    stopping = own_workers.start_worker(concurrency=1)
    job = client.post("/v1/jobs", json={"kind": "test", "spec": {"steps": 40, "step_seconds": 0.25}}).json()
    wait_until(lambda: _running_past(client, job["id"], 3), 30, "the job to be mid-run")
    own_workers.start_worker(concurrency=1)

    own_workers.kill_worker(stopping, signal.SIGTERM)
    assert stopping.wait(timeout=30) == 0  # a warm shutdown: it did not wait for the job to finish

    done = client.get(f"/v1/jobs/{job['id']}/wait", params={"timeout": 60}).json()
    assert done["status"] == "succeeded", done
    assert done["attempt"] == 1 and done["preemptions"] == 1
    events = _events(client, job["id"])
    assert [e["data"]["reason"] for e in events if e["type"] == "preempted"] == ["shutdown"]
    assert sum(e["type"] in TERMINAL for e in events) == 1


def test_a_workers_reaper_recovers_a_killed_workers_job_with_no_api_running(
    own_workers: Stack, client: httpx.Client
) -> None:
    first = own_workers.start_worker(concurrency=1)
    job = client.post("/v1/jobs", json={"kind": "test", "spec": {"steps": 60, "step_seconds": 0.25}}).json()
    wait_until(lambda: _running_past(client, job["id"], 2), 30, "the job to be mid-run")
    assert own_workers.api is not None
    own_workers.api.terminate()  # no API process, so no API reaper
    own_workers.api.wait(timeout=20)
    try:
        own_workers.kill_worker(first)
        own_workers.start_worker(concurrency=1)

        from app.db import session_scope
        from app.models import Job

        def finished() -> str | None:
            with session_scope() as session:
                status = session.get(Job, job["id"]).status  # type: ignore[union-attr]
                return status if status in TERMINAL else None

        assert wait_until(finished, 90, "the job to finish on the second worker") == "succeeded"
    finally:
        own_workers.start_api()
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["attempt"] == 1 and done["preemptions"] == 1
