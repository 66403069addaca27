"""Declarative base, naming convention and shared column types."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, ClauseElement, DateTime, MetaData, TypeDecorator, literal
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.sql.functions import FunctionElement

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend (SQLite drops the zone otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    return datetime.now(UTC)


def row_dict(row: Any, *times: str) -> dict[str, Any]:
    """A Core result row as a JSON-ready dict, with the named datetime columns as ISO 8601 (or None)."""
    data: dict[str, Any] = row._asdict()
    for name in times:
        if data[name] is not None:
            data[name] = data[name].isoformat()
    return data


def new_id(prefix: str) -> str:
    """A time-ordered id: sorting ids sorts by creation time, so cursors can be plain ids."""
    return f"{prefix}_{time.time_ns() // 1_000_000:012x}{os.urandom(8).hex()}"


class db_now(FunctionElement[datetime]):
    """The database's clock (plus `offset` seconds): times that decide who owns a job come from the one
    database, never from hosts, whose clocks drift (docs/architecture.md). SQLite renders it in the text
    format SQLAlchemy stores there, so comparisons with stored values stay correct."""

    type = UTCDateTime()
    inherit_cache = True
    name = "db_now"

    def __init__(self, offset: Any = None) -> None:
        args = [] if offset is None else [offset if isinstance(offset, ClauseElement) else literal(float(offset))]
        super().__init__(*args)


@compiles(db_now, "postgresql")
def _db_now_postgresql(element: db_now, compiler: Any, **kw: Any) -> str:
    offset = list(element.clauses)
    if not offset:
        return "statement_timestamp()"
    return f"(statement_timestamp() + make_interval(secs => {compiler.process(offset[0], **kw)}))"


@compiles(db_now)
def _db_now_sqlite(element: db_now, compiler: Any, **kw: Any) -> str:
    offset = list(element.clauses)
    modifier = f", ({compiler.process(offset[0], **kw)}) || ' seconds'" if offset else ""
    return f"(strftime('%Y-%m-%d %H:%M:%f', 'now'{modifier}) || '000')"
