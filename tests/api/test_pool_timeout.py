"""Every database connection busy: a request that cannot get one within TUNEQ_SQL_POOL_TIMEOUT_SECONDS gets a
503 with Retry-After (a client retries), never a 500 or a hang; the API serves again once connections free up."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg

from tests.isolated import isolated_stack

POOL = {"TUNEQ_SQL_POOL_SIZE": "1", "TUNEQ_SQL_MAX_OVERFLOW": "0", "TUNEQ_SQL_POOL_TIMEOUT_SECONDS": "1",
        "TUNEQ_KEY_CACHE_SECONDS": "300", "TUNEQ_RUN_REAPER": "0"}


@contextmanager
def _jobs_locked(url: str) -> Iterator[None]:
    """Hold a lock on the job table that makes the API's next query of it wait (on SQLite, writes)."""
    if url.startswith("postgresql"):
        with psycopg.connect(url) as conn:
            conn.execute("LOCK TABLE job IN ACCESS EXCLUSIVE MODE")
            yield
            conn.rollback()
        return
    conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def _in_thread(fn: object) -> tuple[threading.Thread, list[httpx.Response]]:
    out: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)  # type: ignore[operator]
    thread.start()
    return thread, out


def test_a_full_pool_answers_503_with_retry_after(backend: dict[str, str], tmp_path: Path) -> None:
    # A stack of its own (no worker, no other reaper): the job below stays queued until the test cancels it.
    with isolated_stack(tmp_path, "pool", POOL) as own:
        url = own.database_url
        auth = [{"Authorization": f"Bearer {own.create_key()}"} for _ in range(2)]
        with httpx.Client(base_url=own.stack.base_url, headers=auth[0], timeout=30) as client, \
                httpx.Client(base_url=own.stack.base_url, headers=auth[1], timeout=30) as uncached:
            job = client.post("/v1/jobs", json={"kind": "test"}).json()  # no worker: it stays queued
            assert client.get("/v1/jobs").status_code == 200  # the key is cached now: auth needs no SQL
            with _jobs_locked(url):
                # Each of these holds its pool's only connection while it waits for the lock.
                holders = [_in_thread(lambda: client.post(f"/v1/jobs/{job['id']}/cancel"))]
                if url.startswith("postgresql"):  # GET /v1/jobs/{id} reads through its own asyncpg pool
                    holders.append(_in_thread(lambda: client.get(f"/v1/jobs/{job['id']}")))
                threading.Event().wait(1.0)
                for who, path in ((client, "/v1/jobs"), (client, f"/v1/jobs/{job['id']}"),
                                  (client, f"/v1/jobs/{job['id']}/events"), (uncached, "/v1/jobs")):
                    r = who.get(path)  # `uncached`: its key lookup is the query that finds no connection
                    assert r.status_code == 503, (path, r.status_code, r.text)
                    assert r.headers["content-type"] == "application/problem+json"
                    assert int(r.headers["retry-after"]) > 0
                    assert r.json()["code"] == "database_unavailable"
            for thread, _ in holders:
                thread.join(timeout=60)
            assert holders[0][1] and holders[0][1][0].status_code == 200, holders[0][1]
            assert client.get("/v1/jobs").status_code == 200
            assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"
        own.stack.stop()
        assert "Traceback" not in (own.logs / "api.log").read_text(errors="replace")
