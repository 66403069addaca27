"""Teams and API keys. Keys are stored as a prefix plus a SHA-256 hash; lookups are cached briefly."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.errors import Forbidden, NotFound, Unauthorized
from app.models import ApiKey, Team, utcnow

DEFAULT_SCOPES = ("jobs:read", "jobs:write")
KEY_MARK = "tq"


@dataclass(frozen=True)
class Caller:
    team_id: str
    key_id: str
    scopes: tuple[str, ...]

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise Forbidden(f"This API key lacks the '{scope}' scope.")


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _prefix_of(key: str) -> str | None:
    parts = key.split("_", 2)  # the secret itself may contain "_"
    if len(parts) != 3 or parts[0] != KEY_MARK or not parts[1] or not parts[2]:
        return None
    return parts[1]


def get_or_create_team(session: Session, name: str) -> Team:
    team = session.scalars(select(Team).where(Team.name == name)).first()
    if team is None:
        team = Team(name=name)
        session.add(team)
        session.flush()
    return team


def create_key(
    session: Session, *, team_id: str, name: str = "", scopes: tuple[str, ...] = DEFAULT_SCOPES
) -> tuple[ApiKey, str]:
    """Create a key; the plain key is returned once and never stored."""
    prefix = secrets.token_hex(6)
    plain = f"{KEY_MARK}_{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey(team_id=team_id, name=name, prefix=prefix, key_hash=_hash(plain), scopes=list(scopes))
    session.add(key)
    session.flush()
    return key, plain


def revoke_key(session: Session, *, key_id: str) -> None:
    revoked = session.execute(
        update(ApiKey).where(ApiKey.id == key_id).values(revoked_at=utcnow()).returning(ApiKey.id)
    ).first()
    if revoked is None:
        raise NotFound(f"No API key {key_id}.")


class KeyCache:
    """Caller lookups kept for `ttl` seconds, so the hot path skips SQL; revocation lands within ttl."""

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[str, tuple[Caller | None, float]] = {}
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> tuple[bool, Caller | None]:
        hit = self._entries.get(key_hash)
        if hit is None or hit[1] < time.monotonic():
            return False, None
        return True, hit[0]

    def put(self, key_hash: str, caller: Caller | None) -> None:
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[key_hash] = (caller, time.monotonic() + self.ttl)


def parse_bearer(header: str | None) -> str:
    if not header:
        raise Unauthorized("Send your API key as 'Authorization: Bearer <key>'.")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Send your API key as 'Authorization: Bearer <key>'.")
    return token.strip()


def cached_caller(cache: KeyCache, token: str) -> tuple[bool, Caller | None]:
    return cache.get(_hash(token))


def lookup_caller(session: Session, cache: KeyCache, token: str) -> Caller:
    """Verify a key against SQL (the cache-miss path) and remember the answer."""
    key_hash = _hash(token)
    prefix = _prefix_of(token)
    caller = None
    if prefix is not None:
        row = session.execute(
            select(ApiKey.id, ApiKey.team_id, ApiKey.key_hash, ApiKey.scopes, ApiKey.revoked_at,
                   ApiKey.last_used_at).where(ApiKey.prefix == prefix)
        ).first()
        if row is not None and row.revoked_at is None and hmac.compare_digest(row.key_hash, key_hash):
            caller = Caller(row.team_id, row.id, tuple(row.scopes))
            now = utcnow()
            if row.last_used_at is None or now - row.last_used_at > timedelta(minutes=1):
                session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
    cache.put(key_hash, caller)
    if caller is None:
        raise Unauthorized("This API key is unknown or revoked.")
    return caller
