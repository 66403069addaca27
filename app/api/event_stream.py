"""A lean text/event-stream response for job watchers (docs/architecture.md, "Watching a job").

Each event is encoded once per process, however many watchers it goes to, and each delivery is one ASGI send:
no task group or timeout scope per message. The stream ends when its source ends, when the client goes away,
or when the server is shutting down (so a stream never holds up a graceful stop)."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from sse_starlette.sse import AppStatus  # set when uvicorn is asked to exit
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

log = logging.getLogger("tuneq.api")

PING = b": ping\n\n"
_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no")]
_ENCODED: OrderedDict[tuple[str, int], bytes] = OrderedDict()
_ENCODED_MAX = 20_000


def encode(job_id: str, event: dict[str, Any]) -> bytes:
    """The SSE frame of one event (id = seq, event = type, data = the event as JSON), built once per process."""
    key = (job_id, event["seq"])
    frame = _ENCODED.get(key)
    if frame is None:
        frame = b"id: %d\nevent: %s\ndata: %s\n\n" % (event["seq"], event["type"].encode(), orjson.dumps(event))
        _ENCODED[key] = frame
        if len(_ENCODED) > _ENCODED_MAX:
            _ENCODED.popitem(last=False)
    return frame


def _shutting_down() -> bool:
    if AppStatus.should_exit:
        return True
    # uvicorn may have bound its exit handler before sse_starlette patched it: ask the server itself.
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    return bool(getattr(server, "should_exit", False))


class EventStream(Response):
    """`frames` yields SSE frames, or None as an idle tick (a ping goes out when nothing was sent for
    `ping_seconds`); `on_close` runs once the stream is over, however it ended."""

    media_type = "text/event-stream"

    def __init__(self, frames: AsyncIterator[bytes | None], on_close: Callable[[], None],
                 ping_seconds: float = 15.0) -> None:
        self.frames, self.on_close, self.ping_seconds = frames, on_close, ping_seconds
        self.status_code = 200
        self.background = None
        self.raw_headers = list(_HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            pump = asyncio.ensure_future(self._pump(send))
            gone = asyncio.ensure_future(self._client_gone(receive))
            try:
                await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (pump, gone):
                    task.cancel()
                await asyncio.gather(pump, gone, return_exceptions=True)
            if not pump.cancelled() and (error := pump.exception()) is not None:
                raise error
            if not pump.cancelled():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            aclose = getattr(self.frames, "aclose", None)
            if aclose is not None:
                await aclose()
            self.on_close()
        if self.background is not None:
            await self.background()

    async def _pump(self, send: Send) -> None:
        last_sent = time.monotonic()
        async for frame in self.frames:
            if frame is None:
                if _shutting_down():
                    return
                if time.monotonic() - last_sent < self.ping_seconds:
                    continue
                frame = PING
            await send({"type": "http.response.body", "body": frame, "more_body": True})
            last_sent = time.monotonic()

    @staticmethod
    async def _client_gone(receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
