"""Status reads while PostgreSQL terminates the API's connections: every answer is a 200 or a 503 with
Retry-After, never a 500 or a dropped connection, and reads work again as soon as the database does."""

from __future__ import annotations

import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest

from tests.support import Stack, wait_until

pytestmark = pytest.mark.skipif(
    not os.environ.get("TUNEQ_TEST_DATABASE_URL", "").startswith("postgresql"),
    reason="terminates PostgreSQL backends (set TUNEQ_TEST_DATABASE_URL to a PostgreSQL database)",
)

CHAOS_SECONDS = 4.0
KILL_EVERY_SECONDS = 0.05


_TERMINATE = ("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
              "WHERE datname = current_database() AND pid <> pg_backend_pid()")


def terminate_backends(url: str) -> int:
    """Terminate every other backend of the test database once; how many there were."""
    with psycopg.connect(url, autocommit=True) as conn:
        return int(conn.execute(_TERMINATE).fetchone()[0])  # type: ignore[index]


class BackendKiller(threading.Thread):
    """Terminates every other backend of the test database, over and over, as a failover or an operator
    would; its own connection is spared."""

    def __init__(self, url: str) -> None:
        super().__init__(name="backend-killer", daemon=True)
        self.url = url
        self.stopping = threading.Event()
        self.killed = 0

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stopping.wait(KILL_EVERY_SECONDS):
                self.killed += conn.execute(_TERMINATE).fetchone()[0]  # type: ignore[index]


def submit(client: httpx.Client, body: dict) -> dict:
    """POST a job as a careful client does: an Idempotency-Key, and a retry after a 503 (the first write after
    an earlier test's kills may meet a dead pooled connection)."""
    key = uuid.uuid4().hex
    r = wait_until(lambda: (resp := client.post("/v1/jobs", json=body, headers={"Idempotency-Key": key}))
                   .status_code != 503 and resp, 20, "POST /v1/jobs to answer")
    assert r.status_code == 201, r.text
    return r.json()


def _hammer(base_url: str, headers: httpx.Headers, paths: list[str], until: float, answers: list[object]) -> None:
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
        while time.monotonic() < until:
            for path in paths:
                try:
                    r = client.get(path)
                except httpx.TransportError as exc:  # a reset or closed connection
                    answers.append(f"{path}: {type(exc).__name__}: {exc}")
                    continue
                if r.status_code == 200:
                    answers.append(200)
                elif (r.status_code == 503 and r.headers.get("retry-after")
                      and r.headers["content-type"] == "application/problem+json"
                      and r.json()["code"] == "database_unavailable"):
                    answers.append(503)
                else:
                    answers.append(f"{path}: {r.status_code} {r.headers.get('retry-after')} {r.text[:300]}")


def test_status_reads_answer_200_or_503_while_backends_are_terminated(stack: Stack, client: httpx.Client) -> None:
    job = submit(client, {"kind": "test", "spec": {"steps": 2}})
    wait_until(lambda: client.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded", 30, "the job to end")
    paths = [f"/v1/jobs/{job['id']}", "/v1/jobs?limit=5", f"/v1/jobs/{job['id']}/events"]

    killer = BackendKiller(os.environ["TUNEQ_TEST_DATABASE_URL"])
    killer.start()
    until = time.monotonic() + CHAOS_SECONDS
    answers: list[object] = []
    hammers = [threading.Thread(target=_hammer, args=(stack.base_url, client.headers, paths, until, answers))
               for _ in range(4)]
    for t in hammers:
        t.start()
    for t in hammers:
        t.join()
    killer.stopping.set()
    killer.join()

    wrong = [a for a in answers if a not in (200, 503)]
    assert not wrong, f"{len(wrong)} of {len(answers)} answers were neither 200 nor 503 + Retry-After: {wrong[:5]}"
    assert killer.killed > 0 and len(answers) > 0
    print(f"\n{len(answers)} reads during {killer.killed} backend kills: {answers.count(200)} × 200, "
          f"{answers.count(503)} × 503")

    # The database is back: so are the reads, on every path.
    for path in paths:
        wait_until(lambda p=path: client.get(p).status_code == 200, 10, f"GET {path} to answer 200 again")
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded"
    assert submit(client, {"kind": "test"})["status"] == "queued"  # and writes (after a retry, at worst)


def test_one_round_of_backend_kills_is_invisible_to_status_reads(stack: Stack, client: httpx.Client) -> None:
    """As in a failover or a restart: every connection the API holds dies at once. The reads that come next
    find them dead, retry on new connections, and answer 200."""
    job = submit(client, {"kind": "test"})
    paths = [f"/v1/jobs/{job['id']}", "/v1/jobs?limit=5", f"/v1/jobs/{job['id']}/events"]
    with ThreadPoolExecutor(8) as pool:  # several connections in each of the API's pools
        assert {r.status_code for r in pool.map(client.get, paths * 8)} == {200}

    killed = terminate_backends(os.environ["TUNEQ_TEST_DATABASE_URL"])
    assert killed > 0
    for path in paths * 3:
        r = client.get(path)
        assert r.status_code == 200, f"GET {path}: {r.status_code} {r.text}"
    submit(client, {"kind": "test"})  # writes recover too (after a retry, at worst)


def test_an_event_stream_survives_backend_kills(stack: Stack, client: httpx.Client) -> None:
    """A live stream started before the kills keeps going through them (it waits for the database instead of
    dropping the connection) and delivers every event once, in order, up to the terminal one."""
    job = submit(client, {"kind": "test", "spec": {"steps": 30, "step_seconds": 0.1}})
    killer = BackendKiller(os.environ["TUNEQ_TEST_DATABASE_URL"])
    with client.stream("GET", f"/v1/jobs/{job['id']}/events", headers={"Accept": "text/event-stream"}) as r:
        assert r.status_code == 200
        killer.start()
        threading.Timer(2.0, killer.stopping.set).start()
        seqs, types = [], []
        for line in r.iter_lines():
            if line.startswith("id:"):
                seqs.append(int(line[3:]))
            elif line.startswith("event:"):
                types.append(line[6:].strip())
    killer.join()
    assert killer.killed > 0
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    assert types[-1] in ("succeeded", "failed", "cancelled") and types[-1] == client.get(
        f"/v1/jobs/{job['id']}").json()["status"]
    submit(client, {"kind": "test"})  # writes recover too (after a retry, at worst)
