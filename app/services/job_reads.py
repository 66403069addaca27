"""The hot read path for GET /v1/jobs/{id}: one indexed query, JSON bytes out, no ORM.

On PostgreSQL it uses an asyncpg pool on the event loop (no thread hop) and passes the stored
JSON columns through untouched (orjson.Fragment); elsewhere it runs the Core query in a thread.
"""

from __future__ import annotations

from typing import Any

import orjson

from app.db import in_sql_thread, session_scope
from app.errors import NotFound
from app.services import jobs as jobs_service

_SQL = (
    "SELECT id, kind, status, spec, labels, depends_on, progress, result, error, attempt, max_attempts, "
    "created_at, started_at, finished_at, cancel_requested_at FROM job WHERE id = $1 AND team_id = $2"
)


def _sync_get(team_id: str, job_id: str) -> dict[str, Any]:
    with session_scope() as session:
        return jobs_service.get(session, team_id=team_id, job_id=job_id)


class JobReader:
    def __init__(self, database_url: str) -> None:
        self.url = database_url
        self.pool: Any = None

    async def start(self) -> None:
        if not self.url.startswith("postgresql"):
            return
        import asyncpg

        async def _codecs(conn: Any) -> None:
            for name in ("json", "jsonb"):
                await conn.set_type_codec(name, schema="pg_catalog", format="text",
                                          encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.Fragment)

        dsn = "postgresql://" + self.url.split("://", 1)[1]
        self.pool = await asyncpg.create_pool(dsn, min_size=2, max_size=10, init=_codecs)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    async def get_json(self, team_id: str, job_id: str) -> bytes:
        """The job as JSON bytes; NotFound when it is not in the caller's team."""
        if self.pool is None:
            return orjson.dumps(await in_sql_thread(_sync_get, team_id, job_id))
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(_SQL, job_id, team_id)
        if row is None:
            raise NotFound(f"No job {job_id} in your team.")
        return orjson.dumps(dict(row.items()))
