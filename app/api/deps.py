"""Request-scoped dependencies: settings, a SQL session, and the authenticated caller."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.db import session_scope
from app.services import auth as auth_service
from app.services.auth import Caller, KeyCache
from app.settings import Settings, get_settings


def get_session() -> Iterator[Session]:
    with session_scope() as session:
        yield session


def _lookup(cache: KeyCache, token: str) -> Caller:
    with session_scope() as session:
        return auth_service.lookup_caller(session, cache, token)


async def get_caller(request: Request) -> Caller:
    """Bearer-key auth; a cache hit costs no SQL and no thread hop."""
    token = auth_service.parse_bearer(request.headers.get("authorization"))
    cache: KeyCache = request.app.state.key_cache
    hit, caller = auth_service.cached_caller(cache, token)
    if hit:
        if caller is None:
            raise auth_service.Unauthorized("This API key is unknown or revoked.")
        return caller
    return await run_in_threadpool(_lookup, cache, token)


async def settings() -> Settings:
    """Async on purpose: a plain `def` dependency would cost a thread hop on every request."""
    return get_settings()


SessionDep = Annotated[Session, Depends(get_session)]
CallerDep = Annotated[Caller, Depends(get_caller)]
SettingsDep = Annotated[Settings, Depends(settings)]
