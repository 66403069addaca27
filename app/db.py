"""One engine per process, built lazily (never at import: forked workers must build their own)."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import orjson
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from app.settings import get_settings

log = logging.getLogger("tuneq.db")
_engine: Engine | None = None
_statement_engine: Engine | None = None
_sessionmaker: sessionmaker[Session] | None = None
_sql_threads: ThreadPoolExecutor | None = None
T = TypeVar("T")
P = ParamSpec("P")


def _json_dumps(value: object) -> str:
    return orjson.dumps(value).decode()


def make_engine(url: str, **options: Any) -> Engine:
    """An engine for `url`; `options` override create_engine's defaults (PostgreSQL only)."""
    json = {"json_serializer": _json_dumps, "json_deserializer": orjson.loads}
    settings = get_settings()
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **json,
                               pool_size=settings.sql_pool_size, max_overflow=settings.sql_max_overflow,
                               pool_timeout=settings.sql_pool_timeout_seconds)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # WAL lets the API read while a worker writes; busy_timeout waits instead of failing.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    # Every wait on the database is bounded: connect, each statement, and a peer that vanished without a
    # FIN (TCP keepalives), so a worker never hangs on a dead connection.
    connect_args = {
        "connect_timeout": max(1, round(settings.sql_connect_timeout_seconds)),
        "options": f"-c statement_timeout={round(settings.sql_statement_timeout_seconds * 1000)}",
        "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
    }
    # A request that finds every connection busy waits sql_pool_timeout_seconds, then gets a 503 with
    # Retry-After (app.main maps the pool's TimeoutError), rather than hanging.
    pool = {"pool_size": settings.sql_pool_size, "max_overflow": settings.sql_max_overflow,
            "pool_timeout": settings.sql_pool_timeout_seconds}
    return create_engine(url, **{**pool, "pool_pre_ping": True, "connect_args": connect_args, **json, **options})


def get_engine() -> Engine:
    global _engine, _sessionmaker
    if _engine is None:
        _engine = make_engine(get_settings().resolved_database_url)
        _sessionmaker = sessionmaker(_engine, expire_on_commit=False)
    return _engine


def reset_engine() -> None:
    """Drop this process's engines (after fork, or when settings change in tests)."""
    global _engine, _statement_engine, _sessionmaker
    for engine in (_engine, _statement_engine):
        if engine is not None:
            engine.dispose(close=False)
    _engine = _statement_engine = None
    _sessionmaker = None


class DatabaseUnavailable(Exception):
    """The database stayed unreachable for the whole retry budget."""


def is_transient(exc: BaseException) -> bool:
    """An error of the database's availability (connection lost, server restarting, busy), not of the query."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError | InterfaceError | PoolTimeout)


def retry_transient(work: Callable[[], T], *, seconds: float, what: str) -> T:
    """Run `work` (one whole transaction), again after transient database errors with capped, jittered
    backoff, for at most `seconds`; then raise DatabaseUnavailable. Other errors propagate at once."""
    deadline = time.monotonic() + seconds
    delay = 0.1
    while True:
        try:
            return work()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if time.monotonic() + delay > deadline:
                raise DatabaseUnavailable(what) from exc
            log.warning("%s: database unavailable (%s); retrying in %.1f s", what, type(exc).__name__, delay)
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 5.0)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    get_engine()
    assert _sessionmaker is not None
    session = _sessionmaker()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def run_statement(work: Callable[[Connection], T], *, idempotent: bool = True) -> T:
    """Run `work`, one self-contained write, where it costs the fewest round trips.

    On PostgreSQL each transition is a single statement (a CTE), so it runs in autocommit with no BEGIN or
    COMMIT, on a connection that is not pinged at checkout: one round trip instead of four. A connection found
    dead is dropped and, if `idempotent`, `work` runs once more (SQLAlchemy's "optimistic" disconnect
    handling); a compare-and-set can afford that, since a repeat of a write that did land matches no row.
    Elsewhere (SQLite) `work` runs in an ordinary transaction.
    """
    global _statement_engine
    engine = get_engine()
    if engine.dialect.name != "postgresql":
        with engine.begin() as conn:
            return work(conn)
    if _statement_engine is None:
        _statement_engine = make_engine(get_settings().resolved_database_url, pool_pre_ping=False,
                                        isolation_level="AUTOCOMMIT")
    for attempt in (1, 2):
        try:
            with _statement_engine.connect() as conn:
                return work(conn)
        except DBAPIError as exc:
            if attempt == 2 or not idempotent or not exc.connection_invalidated:
                raise
    raise AssertionError("unreachable")


async def in_sql_thread(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run blocking SQL work off the event loop, on this process's SQL threads. Cheaper per call than
    Starlette's run_in_threadpool (no capacity limiter or cancel scope), which shows on POST /v1/jobs."""
    global _sql_threads
    if _sql_threads is None:
        _sql_threads = ThreadPoolExecutor(max_workers=32, thread_name_prefix="sql")
    return await asyncio.get_running_loop().run_in_executor(_sql_threads, functools.partial(fn, *args, **kwargs))


async def read_in_sql_thread(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run `fn`, one whole read transaction, on a SQL thread; once more if its connection turned out dead
    (the pool has dropped that one, so the second run gets a new connection). Other errors propagate: the
    handlers in app.main answer 503 for those of the database's availability."""
    try:
        return await in_sql_thread(fn, *args, **kwargs)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        log.info("%s: connection lost (%s); retrying once", getattr(fn, "__name__", "read"), type(exc).__name__)
        return await in_sql_thread(fn, *args, **kwargs)
