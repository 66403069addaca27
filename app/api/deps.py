"""Request-scoped dependencies: settings, a SQL session, and the authenticated caller."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.api.gate import CALLER
from app.db import read_in_sql_thread, session_scope
from app.services import auth as auth_service
from app.services.auth import Caller, KeyCache
from app.settings import Settings, get_settings


def get_session() -> Iterator[Session]:
    """A session that commits when the route function returns. Used with scope="function", so the commit
    (and its failure, e.g. a 503 while the database is away) happens before the response is sent; ending it
    after the response would turn such a failure into a dropped connection."""
    with session_scope() as session:
        yield session


def _lookup(cache: KeyCache, token: str) -> Caller:
    with session_scope() as session:
        return auth_service.lookup_caller(session, cache, token)


async def get_caller(request: Request) -> Caller:
    """The caller the gate in front of /v1 authenticated (app/api/gate.py: key, scope and rate limit, checked
    before the body is read); otherwise Bearer-key auth here: a cache hit costs no SQL and no thread hop."""
    state = request.scope.get("state")
    if state is not None:
        caller = state.get(CALLER)
        if caller is not None:
            return caller  # type: ignore[no-any-return]
    token = auth_service.parse_bearer(request.headers.get("authorization"))
    cache: KeyCache = request.app.state.key_cache
    hit, caller = auth_service.cached_caller(cache, token)
    if hit:
        if caller is None:
            raise auth_service.Unauthorized("This API key is unknown or revoked.")
        return caller
    # Once more on a fresh connection if the first was lost (its one write, last_used_at, is idempotent).
    return await read_in_sql_thread(_lookup, cache, token)


async def settings() -> Settings:
    """Async on purpose: a plain `def` dependency would cost a thread hop on every request."""
    return get_settings()


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
CallerDep = Annotated[Caller, Depends(get_caller)]
SettingsDep = Annotated[Settings, Depends(settings)]
