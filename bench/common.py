"""Shared bench helpers: a PostgreSQL database for benches, and a lean HTTP/1.1 load generator."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text

PG_ADMIN_URL = os.environ.get("TUNEQ_BENCH_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
BENCH_DB = "tuneq_bench"


def drive_job(kind: str, spec: dict, *, team: str = "bench") -> tuple[str, dict]:
    """Create a queued job and drive it in this process (claim → pipeline → finish); its id and result."""
    from app.db import session_scope
    from app.models import Job
    from app.services import auth
    from workers.tasks import drive

    with session_scope() as session:
        job = Job(team_id=auth.get_or_create_team(session, team).id, kind=kind, status="queued", spec=spec)
        session.add(job)
        session.flush()
        job_id = job.id
    drive(job_id)
    with session_scope() as session:
        done = session.get(Job, job_id)
        assert done is not None and done.status == "succeeded", done.error if done else None
        return job_id, done.result or {}


def fake_tinker_env(tmp: str, latency: dict[str, float]) -> None:
    """Point this process at a migrated SQLite database under `tmp` and the in-process fake Tinker service
    answering with `latency` (seconds per op), for benches that drive a job in-process."""
    os.environ.update({"TUNEQ_VAR_DIR": tmp, "TUNEQ_DATABASE_URL": f"sqlite:///{tmp}/bench.db",
                       "TUNEQ_BROKER_URL": "redis://127.0.0.1:1/0", "TUNEQ_LOG_LEVEL": "WARNING",
                       "TUNEQ_TINKER_FAKE": "tests.fakes.tinker_fake:make_fake_service_client",
                       "TUNEQ_TINKER_FAKE_CONFIG": json.dumps({"state_dir": f"{tmp}/tinker", "latency": latency})})
    from app.migrate import upgrade

    upgrade(os.environ["TUNEQ_DATABASE_URL"])


def chatml_artifact(tmp: str, name: str, rows: list[dict]) -> str:
    """Write `rows` as a ChatML JSONL artifact of team "bench" under `tmp`; its id."""
    import orjson

    from app.db import session_scope
    from app.models import Artifact
    from app.services import auth

    data = Path(tmp) / "artifacts" / name
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    with session_scope() as session:
        team = auth.get_or_create_team(session, "bench")
        art = Artifact(team_id=team.id, kind="dataset", name=name, uri=name, format="chatml_jsonl", rows=len(rows))
        session.add(art)
        session.flush()
        return art.id


def fresh_postgres() -> str:
    """Drop and create the bench database; returns its URL."""
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)"))
        conn.execute(text(f"CREATE DATABASE {BENCH_DB}"))
    engine.dispose()
    return PG_ADMIN_URL.rsplit("/", 1)[0].replace("+psycopg", "") + f"/{BENCH_DB}"


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, p: float) -> float:
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, int(len(data) * p))] if data else float("nan")

    def summary(self) -> str:
        return (f"{self.rps:8.0f} req/s  p50 {self.pct(0.5):6.2f} ms  p99 {self.pct(0.99):6.2f} ms  "
                f"mean {statistics.fmean(self.latencies_ms):6.2f} ms  errors {self.errors}")


async def _connection(host: str, port: int, request: bytes, stop_at: float, warm_until: float,
                      out: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while True:
            start = time.perf_counter()
            if start >= stop_at:
                return
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if start >= warm_until:
                out.append((time.perf_counter() - start) * 1000)
                if status != 200:
                    errors.append(status)
    finally:
        writer.close()


async def _load(host: str, port: int, path: str, headers: dict[str, str], connections: int, seconds: float,
                warmup: float) -> LoadResult:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    now = time.perf_counter()
    warm_until, stop_at = now + warmup, now + warmup + seconds
    latencies: list[float] = []
    errors: list[int] = []
    await asyncio.gather(*(_connection(host, port, request, stop_at, warm_until, latencies, errors)
                           for _ in range(connections)))
    return LoadResult(len(latencies), len(errors), seconds, latencies)


def load(url_host: str, port: int, path: str, *, headers: dict[str, str] | None = None, connections: int = 32,
         seconds: float = 5.0, warmup: float = 1.0) -> LoadResult:
    """Closed-loop load: `connections` keep-alive connections, each sending the next request on reply."""
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    return runner(_load(url_host, port, path, headers or {}, connections, seconds, warmup))


async def _post_worker(host: str, port: int, request: bytes, todo: list[int], statuses: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while todo:
            todo.pop()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            statuses.append(int(head[9:12]))
    finally:
        writer.close()


def post_many(host: str, port: int, path: str, body: bytes, *, headers: dict[str, str], count: int,
              connections: int = 8) -> list[int]:
    """Send `count` identical JSON POSTs over `connections` keep-alive connections; their statuses.
    A raw HTTP/1.1 client, so the load generator costs little CPU next to the server it measures."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    todo, statuses = list(range(count)), []  # type: ignore[var-annotated]

    async def run() -> None:
        await asyncio.gather(*(_post_worker(host, port, request, todo, statuses) for _ in range(connections)))

    asyncio.run(run())
    return statuses


def postgres_database(name: str, server_url: str = PG_ADMIN_URL) -> str:
    """Create database `name` on `server_url`'s server if it is missing and empty its schema; its URL. Only
    `name`'s own backends are terminated first (left over from an interrupted run), never another database's."""
    from sqlalchemy.engine import make_url

    admin_url = make_url(server_url).set(drivername="postgresql+psycopg", database="postgres")
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        if conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first() is None:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = :n AND pid <> pg_backend_pid()"), {"n": name})
    engine.dispose()
    url = admin_url.set(database=name)
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def terminate_backends(db_url: str) -> int:
    """Terminate every PostgreSQL backend connected to `db_url`'s database (as a failover or an admin's
    `pg_terminate_backend` would), from a connection to the server's `postgres` database; how many."""
    from sqlalchemy.engine import make_url

    url = make_url(db_url)
    admin = url.set(drivername="postgresql+psycopg", database="postgres")
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                     "WHERE datname = :n AND pid <> pg_backend_pid()"), {"n": url.database}).all()
    finally:
        engine.dispose()
    return sum(1 for (ok,) in rows if ok)
