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

from app.errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from app.models import ApiKey, Team, utcnow
from app.services.ratelimit import parse_limits

# jobs:read: every GET under /v1 (and render); jobs:write: submit, cancel, resume, upload; admin: key
# management (`tuneq keys`, and any /v1/admin or /v1/keys route). app/api/gate.py decides which one a route needs.
SCOPES = ("jobs:read", "jobs:write", "admin")
DEFAULT_SCOPES = ("jobs:read", "jobs:write")
KEY_MARK = "tq"


@dataclass(frozen=True)
class Caller:
    team_id: str
    key_id: str
    scopes: tuple[str, ...]
    rate_limit: str | None = None  # the key's own request limit (e.g. "5/second"); None: TUNEQ_RATE_LIMIT

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise Forbidden(f"This API key lacks the '{scope}' scope; ask an operator for a key that has it "
                            f"(`tuneq keys create --scope {scope}`).")


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def prefix_of(key: str) -> str | None:
    """The key's prefix (its public part, which finds its row), or None when it is not shaped like a key."""
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
    session: Session, *, team_id: str, name: str = "", scopes: tuple[str, ...] = DEFAULT_SCOPES,
    rate_limit: str | None = None,
) -> tuple[ApiKey, str]:
    """Create a key; the plain key is returned once and never stored."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise InvalidRequest(f"scopes: {', '.join(unknown) or 'none given'}; use one or more of {', '.join(SCOPES)}.")
    try:
        parse_limits(rate_limit or "")
    except ValueError:
        raise InvalidRequest(f"rate_limit: '{rate_limit}' is not a rate limit; write e.g. '5/second;100/minute'.") \
            from None
    prefix = secrets.token_hex(6)
    plain = f"{KEY_MARK}_{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey(team_id=team_id, name=name, prefix=prefix, key_hash=_hash(plain), scopes=list(scopes),
                 rate_limit=rate_limit or None)
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

    def was_valid(self, key_hash: str) -> bool:
        """Whether this key was verified as valid here before (its entry may have expired since)."""
        hit = self._entries.get(key_hash)
        return hit is not None and hit[0] is not None

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


def was_valid(cache: KeyCache, token: str) -> bool:
    return cache.was_valid(_hash(token))


def lookup_caller(session: Session, cache: KeyCache, token: str) -> Caller:
    """Verify a key against SQL (the cache-miss path) and remember the answer."""
    key_hash = _hash(token)
    prefix = prefix_of(token)
    caller = None
    if prefix is not None:
        row = session.execute(
            select(ApiKey.id, ApiKey.team_id, ApiKey.key_hash, ApiKey.scopes, ApiKey.revoked_at,
                   ApiKey.last_used_at, ApiKey.rate_limit).where(ApiKey.prefix == prefix)
        ).first()
        if row is not None and row.revoked_at is None and hmac.compare_digest(row.key_hash, key_hash):
            caller = Caller(row.team_id, row.id, tuple(row.scopes), row.rate_limit)
            now = utcnow()
            if row.last_used_at is None or now - row.last_used_at > timedelta(minutes=1):
                session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
    cache.put(key_hash, caller)
    if caller is None:
        raise Unauthorized("This API key is unknown or revoked.")
    return caller
