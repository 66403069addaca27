"""ChatML conversations: the one row format every job reads and writes.

A conversation is a `list[dict]` of messages `{"role": ..., "content": ...}` with role `system`, `user` or
`assistant`. An assistant message may also carry `reasoning_content` (a string): Qwen3's thinking text, the field
name its chat template reads; reasoning can equally be inline as a leading `<think>...</think>` block in `content`.
An assistant message may carry `weight`: the integer 0 or 1 of OpenAI's fine-tuning format, where 0 means "do not
train on this turn" (the renderer gives its tokens loss weight 0; see `app.chat.render`) and 1 is the default.
Extra keys are ignored. The `tool` role is not supported (its Qwen3 rendering merges consecutive tool turns into one
user turn and needs `tool_calls`), so it is reported as an unknown role.

The validator runs on every row of a dataset (millions), so it is one plain-Python pass that reports the first
problem and never repairs anything: a row is either kept as written or dropped with a reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, NotRequired, TypedDict

import orjson

ROLES = frozenset({"system", "user", "assistant"})


class Message(TypedDict):
    role: str
    content: str
    reasoning_content: NotRequired[str]
    weight: NotRequired[int]


class Reason(StrEnum):
    """Stable codes for why a conversation was rejected (stored in drop reports; never rename)."""

    NOT_A_LIST = "not_a_list"
    NOT_A_MESSAGE = "not_a_message"
    UNKNOWN_ROLE = "unknown_role"
    NON_STRING_CONTENT = "non_string_content"
    EMPTY_CONTENT = "empty_content"
    BAD_ALTERNATION = "bad_alternation"
    NO_ASSISTANT_TURN = "no_assistant_turn"
    LAST_TURN_NOT_ASSISTANT = "last_turn_not_assistant"
    TOO_FEW_TURNS = "too_few_turns"
    BAD_WEIGHT = "bad_weight"


@dataclass(frozen=True, slots=True)
class Problem:
    reason: Reason
    field: str
    message: str


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def validate_conversation(messages: object, *, min_turns: int = 1) -> Problem | None:
    """The first problem in `messages`, or None if it can be trained on as is.

    Rules: an optional system message first; then user and assistant alternate, starting with user; every content
    (and any `reasoning_content`) is a string, and content is not blank; the last message is the assistant's;
    `weight`, if present and not null, is on an assistant message and is the integer 0 or 1 (not a bool, not a float).
    A *turn* is one assistant reply, so `min_turns=2` asks for at least two user/assistant exchanges.
    """
    if not isinstance(messages, list):
        return Problem(
            Reason.NOT_A_LIST, "messages", f"expected a list of messages, got {type(messages).__name__}"
        )
    turns = 0
    expected = "user"
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return Problem(
                Reason.NOT_A_MESSAGE, f"messages[{i}]", f"expected an object, got {type(message).__name__}"
            )
        role = message.get("role")
        if type(role) is not str or role not in ROLES:
            return Problem(
                Reason.UNKNOWN_ROLE,
                f"messages[{i}].role",
                f"role {role!r} is not one of system, user, assistant",
            )
        content = message.get("content")
        if type(content) is not str:
            return Problem(
                Reason.NON_STRING_CONTENT,
                f"messages[{i}].content",
                f"content must be a string, got {type(content).__name__}",
            )
        if not content or content.isspace():
            return Problem(
                Reason.EMPTY_CONTENT, f"messages[{i}].content", "content is empty or only whitespace"
            )
        weight = message.get("weight")
        if weight is not None:  # null is absent, as in Parquet rows whose other messages carry a weight
            if role != "assistant":
                return Problem(
                    Reason.BAD_WEIGHT,
                    f"messages[{i}].weight",
                    f"only assistant messages may carry a weight; remove it from this {role} message",
                )
            if type(weight) is not int or weight not in (0, 1):
                return Problem(
                    Reason.BAD_WEIGHT,
                    f"messages[{i}].weight",
                    f"weight must be the integer 0 (do not train on this turn) or 1, got {_short(weight)}",
                )
        if role == "system":
            if i != 0:
                return Problem(
                    Reason.BAD_ALTERNATION, f"messages[{i}].role", "a system message may only come first"
                )
            continue
        if role != expected:
            return Problem(
                Reason.BAD_ALTERNATION,
                f"messages[{i}].role",
                f"expected a {expected} message, got {role}: user and assistant must alternate, user first",
            )
        if role == "assistant":
            reasoning = message.get("reasoning_content")
            if reasoning is not None and type(reasoning) is not str:
                return Problem(
                    Reason.NON_STRING_CONTENT,
                    f"messages[{i}].reasoning_content",
                    f"reasoning_content must be a string, got {type(reasoning).__name__}",
                )
            turns += 1
            expected = "user"
        else:
            expected = "assistant"
    if turns == 0:
        return Problem(Reason.NO_ASSISTANT_TURN, "messages", "the conversation has no assistant message")
    if expected != "user":
        return Problem(
            Reason.LAST_TURN_NOT_ASSISTANT,
            f"messages[{len(messages) - 1}].role",
            "the last message must be the assistant's",
        )
    if turns < min_turns:
        return Problem(
            Reason.TOO_FEW_TURNS, "messages", f"{turns} assistant turn(s), at least {min_turns} required"
        )
    return None


def normalize_key(messages: Sequence[Mapping[str, Any]]) -> bytes:
    """Canonical bytes for exact-duplicate detection: roles and stripped texts, nothing else.

    Surrounding whitespace and extra keys do not make two rows different; reasoning does (it is trained on), and
    so does `weight: 0` (a turn not trained on; it adds an integer 0, so rows without it keep their old keys).
    """
    parts: list[tuple[str | int, ...]] = []
    for m in messages:
        reasoning = m.get("reasoning_content")
        part: tuple[str | int, ...] = (m["role"], m["content"].strip())
        if reasoning and reasoning.strip():
            part += (reasoning.strip(),)
        weight = m.get("weight")
        if weight is not None and type(weight) is not bool and weight == 0:
            part += (0,)
        parts.append(part)
    return orjson.dumps(parts)


def conversation_hash(messages: Sequence[Mapping[str, Any]]) -> bytes:
    """A 16-byte digest of `normalize_key`, small enough to keep one per row in memory while deduplicating."""
    return hashlib.blake2b(normalize_key(messages), digest_size=16).digest()


def apply_system_prompt(
    messages: Sequence[Message], prompt: str, mode: Literal["add", "replace"] = "add"
) -> list[Message]:
    """A new list with `prompt` as the system message.

    `add` keeps a row's own system message and only fills in missing ones; `replace` overrides it.
    """
    if mode not in ("add", "replace"):
        raise ValueError(f"mode must be 'add' or 'replace', got {mode!r}")
    has_system = bool(messages) and messages[0]["role"] == "system"
    if has_system and mode == "add":
        return list(messages)
    system: Message = {"role": "system", "content": prompt}
    rest = messages[1:] if has_system else messages
    return [system, *rest]
