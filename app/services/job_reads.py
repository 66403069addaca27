"""The hot read path for GET /v1/jobs/{id}: one indexed query, JSON bytes out, no ORM.

On PostgreSQL it uses an asyncpg pool on the event loop (no thread hop) and passes the stored
JSON columns through untouched (orjson.Fragment); elsewhere it runs the Core query in a thread.

While the database is away (restarting, failing over, its backends terminated) every database error on
this path becomes DatabaseUnreachable (503 with Retry-After), never a 500. A connection that raised is
terminated, never handed back to the pool: after a backend is killed mid-query asyncpg can leave the
connection in a protocol state where its next use (or the pool's reset on release) fails with
"cannot switch to state …; another operation … is in progress". A lost connection is retried once on a
fresh one (every pooled connection is replaced at its next checkout: backends are rarely killed one at a
time), so a single round of backend kills is usually invisible to the client.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db import read_in_sql_thread, session_scope
from app.errors import DatabaseUnreachable, NotFound
from app.models import Job, db_now
from app.services import jobs as jobs_service
from app.settings import get_settings

log = logging.getLogger("tuneq.api")

_SQL = (
    "SELECT id, kind, status, spec, labels, depends_on, progress, result, error, attempt, max_attempts, preemptions, "
    "created_at, started_at, finished_at, cancel_requested_at, pipeline_id, pipeline_step, estimate, webhook_url "
    "FROM job WHERE id = $1 AND team_id = $2"
)
# A read by primary key takes milliseconds; one that takes this long means the database is in trouble, and
# the client is better served by a 503 it can retry than by a request that hangs.
READ_TIMEOUT_SECONDS = 10.0


def _sync_get(team_id: str, job_id: str) -> dict[str, Any]:
    with session_scope() as session:
        return jobs_service.get(session, team_id=team_id, job_id=job_id)


def _database_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(every database error, those that mean the connection was lost) as asyncpg and the OS raise them."""
    import asyncpg

    lost = (asyncpg.PostgresConnectionError, asyncpg.AdminShutdownError, asyncpg.CrashShutdownError,
            asyncpg.InterfaceError, asyncpg.InternalClientError, ConnectionError)
    # OSError covers TimeoutError (a command or acquire timeout) and socket errors at connect.
    return (asyncpg.PostgresError, *lost, OSError), lost


class JobReader:
    def __init__(self, database_url: str) -> None:
        self.url = database_url
        self.pool: Any = None
        self._errors: tuple[type[BaseException], ...] = ()
        self._lost: tuple[type[BaseException], ...] = ()
        self._timeout = READ_TIMEOUT_SECONDS

    async def start(self) -> None:
        if not self.url.startswith("postgresql"):
            return
        import asyncpg

        async def _codecs(conn: Any) -> None:
            for name in ("json", "jsonb"):
                await conn.set_type_codec(name, schema="pg_catalog", format="text",
                                          encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.Fragment)

        async def _no_reset(conn: Any) -> None:
            """This pool only runs one SELECT per checkout and sets no session state, so a released
            connection needs no RESET ALL / UNLISTEN round trip (asyncpg still rolls back an open transaction)."""

        settings = get_settings()
        self._errors, self._lost = _database_errors()
        self._timeout = min(READ_TIMEOUT_SECONDS, settings.sql_statement_timeout_seconds)
        dsn = "postgresql://" + self.url.split("://", 1)[1]
        self.pool = await asyncpg.create_pool(
            dsn, min_size=0, max_size=settings.sql_pool_size + settings.sql_max_overflow,
            # min 0: the API starts even while the database is down
            init=_codecs, reset=_no_reset,
            timeout=settings.sql_connect_timeout_seconds,  # connecting (TCP and startup)
            command_timeout=self._timeout,  # each query; asyncpg cancels it server-side on expiry
            # The server drops this session's connection if the API host vanishes mid-query.
            server_settings={"tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5",
                             "tcp_keepalives_count": "3"},
        )

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    async def get_json(self, team_id: str, job_id: str) -> bytes:
        """The job as JSON bytes; NotFound when it is not in the caller's team, DatabaseUnreachable when the
        database does not answer."""
        if self.pool is None:
            return orjson.dumps(await read_in_sql_thread(_sync_get, team_id, job_id))
        try:
            try:
                row = await self._fetchrow(job_id, team_id)
            except self._lost as exc:
                # Backends usually go together (a restart, a failover, an operator's kill): have the pool
                # replace every connection it holds at its next checkout, so the retry runs on a new one.
                log.info("GET job %s: connection lost (%s); retrying once on a fresh connection", job_id,
                         type(exc).__name__)
                await self.pool.expire_connections()
                row = await self._fetchrow(job_id, team_id)
        except self._errors as exc:
            log.warning("GET job %s: database unreachable (%s)", job_id, type(exc).__name__)
            raise DatabaseUnreachable() from exc
        if row is None:
            raise NotFound(f"No job {job_id} in your team.")
        return orjson.dumps(dict(row.items()))

    async def _fetchrow(self, *args: Any) -> Any:
        """One query on a pooled connection. A connection that raised (or was cancelled) is terminated rather
        than released: its protocol state is unknown, and the pool opens a new one in its place."""
        # Every connection busy for sql_pool_timeout_seconds: asyncio's TimeoutError, answered 503 (get_json).
        conn = await self.pool.acquire(timeout=min(self._timeout, get_settings().sql_pool_timeout_seconds))
        try:
            row = await conn.fetchrow(_SQL, *args)
        except BaseException:
            conn.terminate()
            raise
        try:
            await self.pool.release(conn)
        except self._errors as exc:  # the row is read; the pool already terminated the connection
            log.info("releasing a job-reader connection failed (%s); it was dropped", type(exc).__name__)
        return row


def seconds_since_progress(db: Session) -> list[tuple[str, str, float]]:
    """(job_id, kind, seconds) for every running job, on the database's clock (for /metrics)."""
    age = func.coalesce(Job.progress_at, Job.started_at)
    rows = db.execute(select(Job.id, Job.kind, db_now(), age).where(Job.status == "running")).all()
    return [(r[0], r[1], max(0.0, (r[2] - r[3]).total_seconds())) for r in rows if r[3] is not None]
