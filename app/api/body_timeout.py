"""A request body must finish arriving in time: a client that declares a body and never sends it gets 408 and
its connection closed, instead of holding the connection (and a server task) forever."""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.responses import problem

log = logging.getLogger("tuneq.api")
UPLOAD_PREFIX = "/v1/files"  # long uploads: the limit is the idle time between chunks, not the whole body


def _declares_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"", b"0")):
            return True
    return False


class BodyTimeout:
    """408 problem+json when the body is not whole within `seconds` (under /v1/files: when no chunk came for
    `seconds`). The app then reads a disconnect, and the connection is closed."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app, self.seconds = app, seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _declares_body(scope):
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        per_chunk = scope["path"].startswith(UPLOAD_PREFIX)
        deadline = loop.time() + self.seconds
        body_done = timed_out = started = False

        async def timed_receive() -> Message:
            nonlocal body_done, timed_out
            if timed_out:
                return {"type": "http.disconnect"}
            if body_done:  # e.g. a streaming response listening for the client's disconnect: no limit
                return await receive()
            limit = self.seconds if per_chunk else deadline - loop.time()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, limit))
            except TimeoutError:
                timed_out = True
                if not started:
                    await self._refuse(scope, send, per_chunk)
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if timed_out:  # our 408 went out instead
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, guarded_send)
        except Exception:
            if not timed_out:
                raise
            # The app saw the disconnect we gave it (e.g. an upload's ClientDisconnect): answered already.
            log.info("%s %s: request body timed out", scope["method"], scope["path"])

    async def _refuse(self, scope: Scope, send: Send, per_chunk: bool) -> None:
        what = (f"no part of the upload arrived for {self.seconds:g} seconds" if per_chunk
                else f"the request body did not arrive whole within {self.seconds:g} seconds")
        response = problem(408, "Request timeout", f"body: {what}; send the whole body as declared by "
                           "Content-Length (TUNEQ_BODY_TIMEOUT_SECONDS).", code="request_timeout",
                           headers={"Connection": "close"})

        async def no_receive() -> Message:
            return {"type": "http.disconnect"}

        await response(scope, no_receive, send)
