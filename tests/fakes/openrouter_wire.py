"""The OpenRouter wire format as the fake server (tests/fakes/openrouter_server.py) writes it: replies,
error bodies, prices and the default dialogue content."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

Send = Callable[[dict[str, Any]], Awaitable[None]]

STATUS_MESSAGES = {
    400: "Bad request",
    401: "No auth credentials found",
    402: "Insufficient credits. Add more using https://openrouter.ai/credits",
    403: "Your chosen model requires moderation and your input was flagged",
    404: "No endpoints found for this model.",
    408: "Request timed out",
    429: "Rate limit exceeded: too many requests",
    500: "Internal Server Error",
    502: "Provider returned error",
    503: "Service unavailable: no available model provider",
}


def default_content(messages: list[dict[str, Any]], item_key: str, attempt: int) -> str:
    """A JSON dialogue derived from the last user message, distinct per item (so dedupe keeps them apart)."""
    prompt = ""
    for m in reversed(messages):
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            prompt = m["content"]
            break
    topic = " ".join(prompt.split())[:120] or "something"
    tag = hashlib.sha1(item_key.encode()).hexdigest()[:8]
    dialogue = {
        "messages": [
            {"role": "user", "content": f"Can you explain {topic}? (question {tag})"},
            {"role": "assistant", "content": f"Sure. Here is a short explanation of {topic}, "
                                             f"written for item {item_key} (answer {tag})."},
        ]
    }
    return orjson.dumps(dialogue).decode()


def tokens(text: str) -> int:
    return max(1, len(text) // 4)


def price_text(x: float) -> str:
    """A per-token price as OpenRouter writes it ("0.0000006", never "6e-07")."""
    return f"{float(x):.15f}".rstrip("0").rstrip(".") or "0"


def num_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def err_body(status: int, message: str, metadata: dict[str, Any] | None = None) -> bytes:
    err: dict[str, Any] = {"code": status, "message": message}
    if metadata:
        err["metadata"] = metadata
    return orjson.dumps({"error": err})


async def send_response(send: Send, status: int, body: bytes,
                        extra_headers: list[tuple[bytes, bytes]] | None = None,
                        content_type: str = "application/json") -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()),
               *(extra_headers or [])]
    try:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    except OSError:  # the client went away
        pass
