"""Source row shapes -> ChatML messages.

A converter turns one source row into a message list, or raises `ShapeError` naming the field that does not fit
(the dataset job drops that row with reason `bad_shape`). Converters only move text into place: they never strip
or rewrite content, and leave role names and content types they do not understand for `validate_conversation`
to report, so every drop carries the most precise reason.

Named shapes: `messages` (ChatML), `sharegpt` (`conversations` of `from`/`value` or `role`/`content`), `alpaca`
(`instruction`/`input`/`output`), `prompt_completion` (strings, or TRL-style lists of messages) and
`question_answer`. Only `messages` (OpenAI's fine-tuning format) keeps a turn's `weight` (0 = do not train on it);
other shapes have no such field, so a `weight` key in their turns means something else and is ignored. Explicit mappings, for anything else:

- `{"messages": "dialog", "role_map": {"bot": "assistant"}, "role_key": "speaker", "content_key": "text"}`:
  a column holding a list of turns. `role_map` extends the ShareGPT map (human/gpt/...); without `role_key` and
  `content_key` each turn may use `role`/`content` or `from`/`value`.
- `{"columns": {"q": "user", "a": "assistant"}}`: one message per column, in the order given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from app.chat.chatml import ROLES, Message

Converter = Callable[[Mapping[str, Any]], list[Message]]

SHAREGPT_ROLES: Mapping[str, str] = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}

# Shape name -> the columns that identify it, in detection priority order.
SHAPE_COLUMNS: Mapping[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "question_answer": ("question", "answer"),
}


class ShapeError(ValueError):
    """One row does not fit the shape; `field` names the column or turn key at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class UnknownShapeError(ValueError):
    """The shape setting names no known shape, or no known shape fits the data's columns."""


def _known_shapes() -> str:
    named = "; ".join(f"{name} ({', '.join(cols)})" for name, cols in SHAPE_COLUMNS.items())
    return f"{named}; or an explicit mapping {{'columns': {{...}}}} or {{'messages': COLUMN, 'role_map': {{...}}}}"


def _field(row: Mapping[str, Any], key: str) -> Any:
    if key not in row:
        raise ShapeError(key, f"missing column {key!r}")
    value = row[key]
    if value is None:
        raise ShapeError(key, "is null")
    return value


def _turns(
    value: Any,
    where: str,
    *,
    role_map: Mapping[str, str],
    role_key: str | None = None,
    content_key: str | None = None,
    keep_weight: bool = False,
) -> list[Message]:
    if not isinstance(value, list):
        raise ShapeError(where, f"expected a list of turns, got {type(value).__name__}")
    out: list[Message] = []
    for i, turn in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(turn, Mapping):
            raise ShapeError(at, f"expected an object, got {type(turn).__name__}")
        rk = role_key or ("role" if "role" in turn else "from")
        ck = content_key or ("content" if "content" in turn else "value")
        if rk not in turn:
            raise ShapeError(f"{at}.{rk}", "missing" if role_key else "missing (expected 'role' or 'from')")
        if ck not in turn:
            raise ShapeError(
                f"{at}.{ck}", "missing" if content_key else "missing (expected 'content' or 'value')"
            )
        role = turn[rk]
        message: Message = {
            "role": role_map.get(role, role) if isinstance(role, str) else role,
            "content": turn[ck],
        }
        reasoning = turn.get("reasoning_content")
        if reasoning is not None:
            message["reasoning_content"] = reasoning
        if keep_weight:
            weight = turn.get("weight")
            if weight is not None:
                message["weight"] = weight  # validate_conversation checks it is 0 or 1, on an assistant
        out.append(message)
    return out


def from_messages(row: Mapping[str, Any]) -> list[Message]:
    return _turns(_field(row, "messages"), "messages", role_map={}, role_key="role", content_key="content",
                  keep_weight=True)


def from_sharegpt(row: Mapping[str, Any]) -> list[Message]:
    return _turns(_field(row, "conversations"), "conversations", role_map=SHAREGPT_ROLES)


def from_alpaca(row: Mapping[str, Any]) -> list[Message]:
    """User = instruction, plus a blank line and `input` when `input` is present and not blank."""
    instruction = _field(row, "instruction")
    output = _field(row, "output")
    extra = row.get("input")
    if extra is None or (isinstance(extra, str) and (not extra or extra.isspace())):
        user = instruction
    else:
        if not isinstance(instruction, str):
            raise ShapeError("instruction", f"expected a string, got {type(instruction).__name__}")
        if not isinstance(extra, str):
            raise ShapeError("input", f"expected a string, got {type(extra).__name__}")
        user = f"{instruction}\n\n{extra}"
    return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def _text_or_turns(row: Mapping[str, Any], column: str, role: str) -> list[Message]:
    value = _field(row, column)
    if isinstance(value, list):
        return _turns(value, column, role_map={}, role_key="role", content_key="content")
    return [{"role": role, "content": value}]


def from_prompt_completion(row: Mapping[str, Any]) -> list[Message]:
    return _text_or_turns(row, "prompt", "user") + _text_or_turns(row, "completion", "assistant")


def from_question_answer(row: Mapping[str, Any]) -> list[Message]:
    return [
        {"role": "user", "content": _field(row, "question")},
        {"role": "assistant", "content": _field(row, "answer")},
    ]


NAMED_CONVERTERS: Mapping[str, Converter] = {
    "messages": from_messages,
    "sharegpt": from_sharegpt,
    "alpaca": from_alpaca,
    "prompt_completion": from_prompt_completion,
    "question_answer": from_question_answer,
}


def _check_keys(spec: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise UnknownShapeError(f"unknown mapping keys {unknown}; allowed: {sorted(allowed)}")


def _check_role(role: Any, where: str) -> None:
    if role not in ROLES:
        raise UnknownShapeError(f"{where} maps to {role!r}, which is not one of system, user, assistant")


def _columns_converter(spec: Mapping[str, Any]) -> Converter:
    _check_keys(spec, {"columns"})
    columns = spec["columns"]
    if not isinstance(columns, Mapping) or not columns:
        raise UnknownShapeError("'columns' must be a non-empty object of column -> role")
    for column, role in columns.items():
        _check_role(role, f"column {column!r}")
    pairs = tuple(columns.items())

    def convert(row: Mapping[str, Any]) -> list[Message]:
        return [{"role": role, "content": _field(row, column)} for column, role in pairs]

    return convert


def _turns_converter(spec: Mapping[str, Any]) -> Converter:
    _check_keys(spec, {"messages", "role_map", "role_key", "content_key"})
    column = spec["messages"]
    role_map = spec.get("role_map") or {}
    role_key = spec.get("role_key")
    content_key = spec.get("content_key")
    if not isinstance(column, str):
        raise UnknownShapeError("'messages' must name the column that holds the turns")
    if not isinstance(role_map, Mapping):
        raise UnknownShapeError("'role_map' must be an object of source role -> role")
    for source, role in role_map.items():
        _check_role(role, f"role_map[{source!r}]")
    for name, key in (("role_key", role_key), ("content_key", content_key)):
        if key is not None and not isinstance(key, str):
            raise UnknownShapeError(f"{name!r} must be a string")
    roles = {**SHAREGPT_ROLES, **role_map}

    def convert(row: Mapping[str, Any]) -> list[Message]:
        return _turns(_field(row, column), column, role_map=roles, role_key=role_key, content_key=content_key)

    return convert


def converter_for(shape: str | Mapping[str, Any]) -> Converter:
    """The converter for a shape name or an explicit mapping; a bad spec fails here, before any row is read."""
    if isinstance(shape, str):
        if shape not in NAMED_CONVERTERS:
            raise UnknownShapeError(f"unknown shape {shape!r}; known shapes: {_known_shapes()}")
        return NAMED_CONVERTERS[shape]
    if "columns" in shape:
        return _columns_converter(shape)
    if "messages" in shape:
        return _turns_converter(shape)
    raise UnknownShapeError(f"a mapping needs 'columns' or 'messages'; known shapes: {_known_shapes()}")


def detect_shape(rows: Sequence[Mapping[str, Any]], *, sample: int = 20) -> str:
    """The named shape whose columns all of the first `sample` rows have (checked in `SHAPE_COLUMNS` order)."""
    head = list(rows[:sample])
    if not head:
        raise UnknownShapeError("no rows to detect the shape from")
    if not all(isinstance(row, Mapping) for row in head):
        raise UnknownShapeError("rows are not objects with named columns")
    seen = list(dict.fromkeys(key for row in head for key in row))
    for name, required in SHAPE_COLUMNS.items():
        if all(all(col in row for col in required) for row in head):
            return name
    raise UnknownShapeError(
        f"cannot tell the dataset shape from its columns {seen}; known shapes: {_known_shapes()}"
    )
