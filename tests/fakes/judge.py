"""Judges for the loopback fake OpenRouter (`FakeOpenRouter(content=...)` / `configure(content=...)`).

The evaluation job names each judge request `X-Tuneq-Item: {job}:{row}:{model}:{order}`, where order `ab` shows
the candidate's reply first (as A) and `ba` second (as B); these fakes read it to know where the candidate is.
"""

from __future__ import annotations

from typing import Any

import orjson


def _answer(winner: str, reason: str) -> str:
    return orjson.dumps({"winner": winner, "reason": reason}).decode()


def prefers_first(messages: list[dict[str, Any]], item: str, attempt: int) -> str:
    """A judge with pure position bias: reply A, whatever the replies say."""
    return _answer("A", "the first reply reads better")


def prefers_candidate(messages: list[dict[str, Any]], item: str, attempt: int) -> str:
    """A judge that always picks the candidate (A in the ab order, B in the ba order), in fenced prose, as
    chat models often answer."""
    winner = "A" if item.endswith(":ab") else "B"
    return f'Here is my verdict:\n```json\n{{"winner": "{winner}", "reason": "the candidate is better"}}\n```'


def mumbles(messages: list[dict[str, Any]], item: str, attempt: int) -> str:
    """A judge whose answer names no winner."""
    return "Both replies have their merits."
