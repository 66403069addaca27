"""The gate in front of /v1: the API key, its scope and its rate limit are checked before anything else runs —
before FastAPI reads and parses a request body, so a client without a valid key cannot make the API parse one.

A pure ASGI middleware. The caller it authenticates is stored in the request's state, where
`app.api.deps.get_caller` finds it. The scope a request needs is derived here from its method and path, once
for every route, so a new route cannot forget it: reads (GET, HEAD, and the render POST, which changes nothing)
need `jobs:read`, other writes `jobs:write`, key management (`/v1/admin/…`, `/v1/keys…`) `admin`.
A cache hit costs no SQL and no thread hop; the per-key rate limit is one Redis round trip per window item.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid

from limits import RateLimitItem
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.responses import domain_problem, problem
from app.db import DatabaseUnavailable, is_transient, read_in_sql_thread, session_scope
from app.errors import DatabaseUnreachable, NotFound, TuneqError, Unauthorized
from app.services import auth as auth_service
from app.services.auth import Caller, KeyCache
from app.services.ratelimit import Limiter, TooManyRequests, parse_limits
from app.settings import Settings

log = logging.getLogger("tuneq.api")

READ_METHODS = frozenset({"GET", "HEAD"})
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# POST routes that only read (path patterns): rendering a row of an artifact changes nothing.
READ_POSTS = (re.compile(r"^/v1/artifacts/[^/]+/render$"),)
ADMIN_PATHS = re.compile(r"^/v1/(admin(/|$)|keys(/|$))")
FLOOD_ANSWER_DELAY_SECONDS = 0.25  # how long a 429 waits (no CPU spent): a flooding client slows itself
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
CALLER = "tuneq_caller"  # the key of the authenticated Caller in the ASGI scope's "state"


def scope_for(method: str, path: str) -> str | None:
    """The scope a request to `path` with `method` needs; None for a method no route may use."""
    if ADMIN_PATHS.match(path):
        return "admin"
    if method in READ_METHODS:
        return "jobs:read"
    if method in WRITE_METHODS:
        return "jobs:read" if any(p.match(path) for p in READ_POSTS) else "jobs:write"
    return None


def _lookup(cache: KeyCache, token: str) -> Caller:
    with session_scope() as session:
        return auth_service.lookup_caller(session, cache, token)


def _client_address(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


class AuthGate:
    def __init__(self, app: ASGIApp, settings: Settings, key_cache: KeyCache) -> None:
        self.app = app
        self.cache = key_cache
        self.limiter = Limiter(settings.resolved_broker_url)
        self.key_limits = parse_limits(settings.rate_limit)
        self.address_limits = parse_limits(settings.key_lookup_rate_limit)
        self.prefix_limits = parse_limits(settings.key_lookup_prefix_rate_limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not (scope["path"].startswith("/v1/") or scope["path"] == "/v1"):
            await self.app(scope, receive, send)
            return
        try:
            caller = await self._admit(scope)
        except TuneqError as exc:
            await self._refuse(exc, scope, receive, send)
            return
        except (DBAPIError, PoolTimeout, DatabaseUnavailable, ConnectionError) as exc:
            if isinstance(exc, DBAPIError) and not is_transient(exc):
                await self._bug(exc, scope, receive, send)
                return
            log.warning("database unreachable checking a key on %s: %s", scope["path"], type(exc).__name__)
            await self._refuse(DatabaseUnreachable(), scope, receive, send)
            return
        if CONTROL_CHARACTERS.search(scope["path"]):  # no id holds one (and PostgreSQL refuses NUL in text)
            await self._refuse(NotFound("No such resource: the path holds a control character."), scope, receive, send)
            return
        scope.setdefault("state", {})[CALLER] = caller
        await self.app(scope, receive, send)

    async def _admit(self, scope: Scope) -> Caller:
        header = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        token = auth_service.parse_bearer(header)
        caller = await self._authenticate(scope, token)
        limits = self._limits_of(caller)
        over = await self.limiter.hit(f"key:{caller.key_id}", limits)
        if over is not None:
            retry, limit = over
            await asyncio.sleep(FLOOD_ANSWER_DELAY_SECONDS)  # a key over its limit is answered slowly too
            raise TooManyRequests(f"This API key went over its request limit ({limit}); retry in {retry} s.",
                                  retry_after=retry)
        needed = scope_for(scope["method"], scope["path"])
        if needed is None:
            raise TuneqError(f"Method {scope['method']} is not used by this API.")
        caller.require(needed)
        return caller

    def _limits_of(self, caller: Caller) -> tuple[RateLimitItem, ...]:
        if not caller.rate_limit:
            return self.key_limits
        try:
            return parse_limits(caller.rate_limit)
        except ValueError:  # written by hand into the row: the server's limit applies
            log.warning("API key %s has an invalid rate_limit; using TUNEQ_RATE_LIMIT", caller.key_id)
            return self.key_limits

    async def _authenticate(self, scope: Scope, token: str) -> Caller:
        hit, caller = auth_service.cached_caller(self.cache, token)
        if hit:
            if caller is None:
                raise Unauthorized("This API key is unknown or revoked.")
            return caller
        prefix = auth_service.prefix_of(token)
        if prefix is None:  # not shaped like a key: nothing to look up
            raise Unauthorized("This API key is unknown or revoked.")
        # Failed lookups count against the client address and the key's prefix; past their limits, a key not
        # verified here before is refused without SQL, so made-up keys cannot turn every request into a query.
        # (A key verified before, whose cache entry expired, is looked up anyway.)
        identities = ((f"addr:{_client_address(scope)}", self.address_limits), (f"prefix:{prefix}", self.prefix_limits))
        if not auth_service.was_valid(self.cache, token):
            for identity, _ in identities:
                over = self.limiter.blocked(identity)
                if over is not None:
                    # Answer a flood slowly (no CPU spent waiting): a client that sends the next made-up key
                    # only after the last answer gets a few per second through, not thousands.
                    await asyncio.sleep(FLOOD_ANSWER_DELAY_SECONDS)
                    raise TooManyRequests(f"Too many unknown API keys from your address (over {over[1]} failed "
                                          f"lookups); retry in {over[0]} s with a valid key.", retry_after=over[0])
        try:
            return await read_in_sql_thread(_lookup, self.cache, token)
        except Unauthorized:
            for identity, limits in identities:
                await self.limiter.hit(identity, limits)
            raise

    @staticmethod
    async def _refuse(exc: TuneqError, scope: Scope, receive: Receive, send: Send) -> None:
        await domain_problem(exc)(scope, receive, send)

    @staticmethod
    async def _bug(exc: Exception, scope: Scope, receive: Receive, send: Send) -> None:
        ref = uuid.uuid4().hex[:12]
        log.error("unhandled error checking a key on %s [ref %s]", scope["path"], ref, exc_info=exc)
        response = problem(500, "Internal error", f"Something went wrong on our side; the error was logged under "
                           f"reference {ref}.", code="internal_error")
        await response(scope, receive, send)
