"""create_app(): routers, error handlers, body limit, and the lifespan that runs the reaper."""

from __future__ import annotations

import gc
import logging
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api import (
    artifacts,
    checkpoints,
    events,
    health,
    job_outputs,
    jobs,
    metrics,
    openapi,
    pipelines,
    ui,
    webhooks,
)
from app.api.body_timeout import BodyTimeout
from app.api.gate import AuthGate
from app.api.responses import domain_problem, problem
from app.db import DatabaseUnavailable, get_engine, is_transient
from app.errors import DatabaseUnreachable, PayloadTooLarge, TuneqError
from app.logs import configure_logging
from app.services.auth import KeyCache
from app.services.chat import ChatSampler
from app.services.event_hub import EventHub
from app.services.job_reads import JobReader
from app.services.ratelimit import Limiter
from app.services.reaper import ReaperThread
from app.services.watching import WatchLimits
from app.settings import Settings, get_settings
from app.telemetry import CallerContext, RequestTelemetry, process_exited

log = logging.getLogger("tuneq.api")


class BodyLimit:
    """Refuse bodies over the limit before they are read whole (chunked uploads included)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/v1/files"):
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
        seen = 0
        refused = False

        async def limited() -> Message:
            # Past the limit: answer 413 ourselves and tell the app the client went away.
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                refused = True
                await self._refuse(scope, receive, send)
                return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, limited, guarded_send)

    def _detail(self) -> str:
        return f"The request body is larger than {self.max_bytes} bytes; send less (TUNEQ_MAX_BODY_BYTES)."

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(413, PayloadTooLarge.title, self._detail(), code=PayloadTooLarge.code)
        await response(scope, receive, send)


def _loc(error: dict[str, Any]) -> list[Any]:
    loc = list(error.get("loc", ()))
    if error.get("type") in ("union_tag_invalid", "union_tag_not_found"):
        loc.append("kind")
    return loc


def _validation_problem(exc: RequestValidationError) -> Response:
    errors = [{"loc": _loc(e), "msg": e.get("msg", "")} for e in exc.errors()]
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx") or {}
        detail = f"The request body is not valid JSON ({ctx.get('error', 'decode error')} at character {_loc(first)[-1]})."
        return problem(400, "Malformed JSON", detail, code="malformed_json", errors=errors)
    where = ".".join(str(p) for p in errors[0]["loc"]) if errors else "body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    detail = f"{where}: {errors[0]['msg'] if errors else 'invalid'}{more}"
    return problem(422, "Invalid request", detail, code="invalid_request", errors=errors)


def _bug_problem(request: Request, exc: Exception) -> Response:
    ref = uuid.uuid4().hex[:12]
    log.error("unhandled error on %s %s [ref %s]", request.method, request.url.path, ref, exc_info=exc)
    return problem(500, "Internal error", f"Something went wrong on our side; the error was logged under "
                   f"reference {ref}.", code="internal_error")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TuneqError)
    async def _domain(_: Request, exc: TuneqError) -> Response:
        return domain_problem(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        return _validation_problem(exc)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> Response:
        title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "Error")
        detail = exc.detail if isinstance(exc.detail, str) else title
        return problem(exc.status_code, title, detail, code=title.lower().replace(" ", "_"))

    # Database errors are answered here, not by the catch-all below: that one re-raises to the server, which
    # then drops the client's keep-alive connection. A lost connection, a server restarting or a timeout is a
    # 503 the client retries; any other database error is a bug (500), logged under a reference.
    @app.exception_handler(DBAPIError)
    @app.exception_handler(PoolTimeout)
    @app.exception_handler(DatabaseUnavailable)
    @app.exception_handler(ConnectionError)
    async def _database(request: Request, exc: Exception) -> Response:
        if isinstance(exc, DBAPIError) and not is_transient(exc):
            return _bug_problem(request, exc)
        log.warning("database unreachable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
        return domain_problem(DatabaseUnreachable())

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> Response:
        return _bug_problem(request, exc)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        get_engine()
        await app.state.job_reader.start()
        await app.state.event_hub.start()
        reaper = ReaperThread(settings)
        if settings.run_reaper:
            reaper.start()
        # Everything loaded so far lives as long as the process: keep it out of the collector's full passes,
        # which otherwise walk it all and stall requests for tens of milliseconds (bench/api.py p99).
        gc.collect()
        gc.freeze()
        yield
        reaper.stopping.set()
        await app.state.event_hub.stop()
        await app.state.job_reader.close()
        app.state.chat_sampler.close()
        process_exited(settings.prometheus_multiproc_dir, os.getpid())

    app = FastAPI(title="tuneq", version="0.1.0", lifespan=lifespan,
                  description="Fine-tuning jobs for Qwen3 with LoRA on Tinker.")
    app.state.key_cache = KeyCache(settings.key_cache_seconds)
    app.state.job_reader = JobReader(settings.resolved_database_url)
    app.state.event_hub = EventHub(settings.resolved_database_url)
    app.state.watch_limits = WatchLimits(settings.max_streams_per_key)
    app.state.chat_sampler = ChatSampler(settings)  # Tinker clients are made on the first reply
    app.state.chat_limiter = Limiter(settings.resolved_broker_url)
    _install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(jobs.router)
    app.include_router(events.router)
    app.include_router(job_outputs.router)
    app.include_router(checkpoints.router)
    app.include_router(artifacts.router)
    app.include_router(pipelines.router)
    app.include_router(webhooks.router)
    app.include_router(ui.router)  # the dashboard's static files (app/ui/)
    openapi.install(app)  # a truthful /openapi.json: bearer auth, problem+json errors
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(BodyTimeout, seconds=settings.body_timeout_seconds)
    app.add_middleware(CallerContext)  # inside the gate: it binds the team the gate found to the request's logs
    # Key, scope and rate limit are checked before any body is read (app/api/gate.py).
    app.add_middleware(AuthGate, settings=settings, key_cache=app.state.key_cache)
    # Outermost: a request id and a duration for every request, refused ones included.
    app.add_middleware(RequestTelemetry)
    return app
