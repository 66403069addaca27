"""Streams and waits are fed by one event hub per API process: events reach every watcher once, in order, with
no SQL per watcher; the per-key cap, key revocation and the bounds of `after` / `Last-Event-ID` hold."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import event, text

from tests.api.local_api import LocalApi, local_api, new_key
from tests.support import wait_until


def running_job(team_id: str) -> tuple[str, int]:
    """A claimed test job (its first event, seq 1, is `running`) and its lease token."""
    from app.db import run_statement, session_scope
    from app.models import Job
    from app.services import transitions

    with session_scope() as session:
        job = Job(team_id=team_id, kind="test", status="queued", spec={"steps": 1})
        session.add(job)
        session.flush()
        job_id = job.id
    claim = run_statement(lambda c: transitions.claim(c, job_id, owner="test", lease_seconds=600))
    assert claim is not None
    return job_id, claim.token


def emit(job_id: str, token: int, i: int) -> None:
    from app.db import run_statement
    from app.services import transitions

    run_statement(lambda c: transitions.fenced_update(c, job_id, token, {}, [("step", {"i": i})]))


def finish(job_id: str, token: int) -> None:
    from app.db import run_statement
    from app.services import transitions

    run_statement(lambda c: transitions.finish(c, job_id, token, "succeeded", result={"ok": True}))


class Watcher(threading.Thread):
    """One SSE client in a thread: the ids and event types it received, in order."""

    def __init__(self, api: LocalApi, key: str, job_id: str, last_event_id: int | None = None) -> None:
        super().__init__(daemon=True)
        self.url = f"{api.base_url}/v1/jobs/{job_id}/events"
        self.headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
        if last_event_id is not None:
            self.headers["Last-Event-ID"] = str(last_event_id)
        self.seqs: list[int] = []
        self.types: list[str] = []
        self.status: int | None = None
        self.body: Any = None
        self.ended = False

    def run(self) -> None:
        with httpx.Client(timeout=httpx.Timeout(10, read=60)) as client, \
                client.stream("GET", self.url, headers=self.headers) as r:
            self.status = r.status_code
            if r.status_code != 200:
                self.body = r.read()
                return
            for line in r.iter_lines():
                if line.startswith("id:"):
                    self.seqs.append(int(line[3:].strip()))
                elif line.startswith("event:"):
                    self.types.append(line[6:].strip())
        self.ended = True


@contextmanager
def sql_statements() -> Iterator[list[str]]:
    """Every SQL statement this process runs meanwhile (the local API runs in this process)."""
    from app.db import get_engine

    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _event_reads(statements: list[str]) -> list[str]:
    """Reads of a job's events (the hub's and replays'), not the SQLite id tail."""
    return [s for s in statements if "FROM job_event" in s and "job_event.seq >" in s]


def test_events_reach_every_watcher_with_no_sql_per_watcher(backend: dict[str, str]) -> None:
    watchers_count, steps = 15, 5
    with local_api(max_streams_per_key=100) as api:
        team_id, _, key = new_key()
        job_id, token = running_job(team_id)
        watchers = [Watcher(api, key, job_id) for _ in range(watchers_count)]
        for w in watchers:
            w.start()
        wait_until(lambda: all(w.seqs for w in watchers), 30, "every watcher to replay the first event")
        reads_before = api.hub.reads
        with sql_statements() as statements:
            for i in range(steps):
                emit(job_id, token, i)
                wait_until(lambda i=i: all(len(w.seqs) >= i + 2 for w in watchers), 30, f"step {i} everywhere")
            finish(job_id, token)
            for w in watchers:
                w.join(30)
        for w in watchers:
            assert w.ended and w.seqs == list(range(1, steps + 3)), w.seqs
            assert w.types[-1] == "succeeded"
        # One read per batch of new events for the whole process, however many watch: 6 batches here, where
        # per-stream polling would read at least once per watcher.
        reads = _event_reads(statements)
        assert len(reads) <= steps + 3 < watchers_count, reads
        assert api.hub.reads - reads_before <= steps + 3
        if backend["TUNEQ_DATABASE_URL"].startswith("postgresql"):
            assert api.hub.listening and api.hub.notifications >= steps + 1  # woken by NOTIFY, no tail
            assert api.hub.tail_reads == 0


def test_no_event_lost_or_repeated_across_the_replay_boundary(backend: dict[str, str]) -> None:
    total = 120
    with local_api(max_streams_per_key=100) as api:
        team_id, _, key = new_key()
        job_id, token = running_job(team_id)
        emitted = [1]
        watchers: list[tuple[Watcher, int]] = []

        def produce() -> None:
            for i in range(total):
                emit(job_id, token, i)
                emitted.append(emitted[-1] + 1)
                time.sleep(random.uniform(0, 0.004))

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        rng = random.Random(7)
        while producer.is_alive() and len(watchers) < 12:  # join at random points while events keep coming
            start = rng.randint(0, emitted[-1])
            w = Watcher(api, key, job_id, last_event_id=start if rng.random() < 0.7 else None)
            w.start()
            watchers.append((w, start if "Last-Event-ID" in w.headers else 0))
            time.sleep(rng.uniform(0.01, 0.05))
        producer.join(60)
        finish(job_id, token)
        last = total + 2
        for w, start in watchers:
            w.join(30)
            assert w.ended, f"a watcher from {start} did not end"
            assert w.seqs == list(range(start + 1, last + 1)), (start, w.seqs[:5], w.seqs[-5:])


def stream_and_wait(api: Any, key: str, job_id: str) -> tuple[Watcher, threading.Thread, dict[str, Any]]:
    """An open event stream and a long-poll wait on the job, both subscribed: (stream, wait thread, its answer)."""
    w = Watcher(api, key, job_id)
    w.start()
    answer: dict[str, Any] = {}

    def wait() -> None:
        r = httpx.get(f"{api.base_url}/v1/jobs/{job_id}/wait", params={"timeout": 120},
                      headers={"Authorization": f"Bearer {key}"}, timeout=150)
        answer.update(status=r.status_code, body=r.json())

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    wait_until(lambda: w.seqs and api.hub.watchers() == 2, 20, "the stream and the wait to subscribe")
    return w, waiter, answer


def test_a_terminal_event_ends_the_stream_and_wakes_wait(backend: dict[str, str]) -> None:
    with local_api() as api:
        team_id, _, key = new_key()
        job_id, token = running_job(team_id)
        w, waiter, answer = stream_and_wait(api, key, job_id)
        finish(job_id, token)
        w.join(30)
        waiter.join(30)  # far less than the wait's own 120 s: it answered because the job ended
        assert w.ended and w.types == ["running", "succeeded"]
        assert answer["status"] == 200 and answer["body"]["status"] == "succeeded"
        # A stream resumed after the terminal event ends at once; a wait on an ended job answers at once.
        again = Watcher(api, key, job_id, last_event_id=2)
        again.run()
        assert again.ended and again.seqs == []
        r = httpx.get(f"{api.base_url}/v1/jobs/{job_id}/wait", params={"timeout": 120},
                      headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert r.json()["status"] == "succeeded"
        wait_until(lambda: api.hub.watchers() == 0, 10, "every watch to be closed")


def test_open_streams_and_waits_per_key_are_capped(backend: dict[str, str]) -> None:
    with local_api(max_streams_per_key=3) as api:
        team_id, _, key = new_key()
        job_id, token = running_job(team_id)
        open_ = [Watcher(api, key, job_id) for _ in range(3)]
        for w in open_:
            w.start()
        wait_until(lambda: api.hub.watchers() == 3, 20, "three open streams")
        auth = {"Authorization": f"Bearer {key}"}
        extra = Watcher(api, key, job_id)
        extra.run()
        r = httpx.get(f"{api.base_url}/v1/jobs/{job_id}/wait", params={"timeout": 5}, headers=auth)
        for status, body in ((extra.status, httpx.Response(429, content=extra.body).json()),
                             (r.status_code, r.json())):
            assert status == 429
            assert body["code"] == "too_many_streams" and "3 open" in body["detail"]
        assert r.headers["content-type"] == "application/problem+json" and int(r.headers["retry-after"]) > 0
        _, _, other_key = new_key()  # the cap is per key
        other = Watcher(api, other_key, job_id)
        assert other.status is None
        finish(job_id, token)
        for w in open_:
            w.join(30)
        wait_until(lambda: api.hub.watchers() == 0, 10, "the streams to close")
        assert httpx.get(f"{api.base_url}/v1/jobs/{job_id}/wait", params={"timeout": 0}, headers=auth).status_code == 200


def test_revoking_a_key_ends_its_stream_and_its_wait(backend: dict[str, str]) -> None:
    from app.db import session_scope
    from app.services import auth as auth_service
    from app.settings import get_settings

    window = get_settings().key_cache_seconds
    with local_api() as api:
        team_id, key_id, key = new_key()
        job_id, _ = running_job(team_id)
        w, waiter, answer = stream_and_wait(api, key, job_id)
        with session_scope() as session:
            auth_service.revoke_key(session, key_id=key_id)
        w.join(2 * window + 5)
        waiter.join(2 * window + 5)
        assert w.ended and w.seqs == [1], "the stream of a revoked key must end"
        assert answer["status"] == 401 and answer["body"]["code"] == "unauthorized"


@pytest.mark.parametrize("value", [str(2**64), "99999999999999999999", str(2**31)])
def test_after_and_last_event_id_beyond_range_are_422(backend: dict[str, str], value: str) -> None:
    with local_api() as api:
        team_id, _, key = new_key()
        job_id, _ = running_job(team_id)
        auth = {"Authorization": f"Bearer {key}"}
        url = f"{api.base_url}/v1/jobs/{job_id}/events"
        r = httpx.get(url, params={"after": value}, headers=auth)
        assert r.status_code == 422 and "after" in r.json()["detail"]
        for accept in ("application/json", "text/event-stream"):
            r = httpx.get(url, headers={**auth, "Accept": accept, "Last-Event-ID": value})
            assert r.status_code == 422 and "last-event-id" in r.json()["detail"].lower()
        r = httpx.get(url, headers={**auth, "Accept": "text/event-stream", "Last-Event-ID": "seven"})
        assert r.status_code == 422 and "last-event-id" in r.json()["detail"].lower()


def test_a_watcher_that_falls_behind_is_resynchronised_from_sql(backend: dict[str, str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from app.services import event_hub
    from app.services.auth import Caller
    from app.services.watching import Watch

    monkeypatch.setattr(event_hub, "MAX_BACKLOG", 3)
    with local_api() as api:
        team_id, key_id, key = new_key()
        job_id, token = running_job(team_id)
        loop = api.hub._tasks[0].get_loop()
        state = api.app.state
        watch = Watch(api.hub, state.watch_limits, state.key_cache, key, Caller(team_id, key_id, ("jobs:read",)),
                      job_id)

        async def open_() -> Any:
            watch.open()
            first = await watch.first_page(0)
            stream = watch.follow(0, first)
            assert (await anext(stream) or {}).get("seq") == 1  # replayed; the hub took over
            return stream

        stream = asyncio.run_coroutine_threadsafe(open_(), loop).result(20)
        for i in range(12):  # separate batches, while the watcher reads nothing
            emit(job_id, token, i)
            seq = i + 2
            wait_until(lambda seq=seq: api.hub._jobs[job_id].cursor == seq or watch.sub.resync, 10, "the hub")
        assert watch.sub is not None and watch.sub.resync and len(watch.sub.batches) <= 3
        finish(job_id, token)

        async def drain() -> list[int]:
            seqs = [event["seq"] async for event in stream if event is not None]
            watch.close()
            return seqs

        assert asyncio.run_coroutine_threadsafe(drain(), loop).result(20) == list(range(2, 15))


@pytest.mark.skipif("not __import__('os').environ.get('TUNEQ_TEST_DATABASE_URL')", reason="PostgreSQL only")
def test_streams_catch_up_after_the_listen_connection_is_killed(backend: dict[str, str]) -> None:
    from app.db import get_engine

    with local_api() as api:
        wait_until(lambda: api.hub.listening, 20, "the hub to LISTEN")
        team_id, _, key = new_key()
        job_id, token = running_job(team_id)
        w = Watcher(api, key, job_id)
        w.start()
        wait_until(lambda: w.seqs, 20, "the first event")
        with get_engine().connect() as conn:  # every other backend of this database: the LISTEN one included
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
            conn.commit()
        emit(job_id, token, 0)  # announced while the hub may not be listening: found on reconnect
        wait_until(lambda: api.hub.listening, 30, "the hub to LISTEN again")
        emit(job_id, token, 1)
        finish(job_id, token)
        w.join(60)
        assert w.ended and w.seqs == [1, 2, 3, 4]


def test_a_client_that_goes_away_frees_its_slot(backend: dict[str, str]) -> None:
    with local_api(max_streams_per_key=2) as api:
        team_id, key_id, key = new_key()
        job_id, token = running_job(team_id)
        headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
        url = f"{api.base_url}/v1/jobs/{job_id}/events"
        for _ in range(3):  # more streams in turn than the cap allows at once
            with httpx.Client(timeout=10) as c, c.stream("GET", url, headers=headers) as r:
                assert r.status_code == 200
                next(r.iter_lines())  # the replay started; then the client hangs up
            wait_until(lambda: api.hub.watchers() == 0, 10, "the server to notice the client left")
        assert api.app.state.watch_limits.open.get(key_id) is None
        finish(job_id, token)
