"""The budget of one template render and the checks that spend it (docs/architecture.md, "Bounds and limits").

`app.services.templates` builds the Jinja environment that calls these: every loop step, call and `range()`
spends steps from the render's `Budget`, and every operator, filter and string method that could build a large
value is checked against the size bound *before* it runs.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, cast

import jinja2

from app.settings import get_settings

MAX_INT_BITS = 4096  # 1,234 decimal digits: more than any prompt needs, cheap to multiply and print


class TemplateError(ValueError):
    """The template cannot render (syntax aside): a runtime error, or a bound it exceeds."""


class TemplateLimitError(TemplateError):
    """The template exceeds one of the render's bounds."""


@dataclass
class Budget:
    """What one render may still spend."""

    max_chars: int
    max_steps: int
    max_seconds: float
    steps: int = 0
    emitted: int = 0
    deadline: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.max_seconds

    def charge(self, steps: int = 1) -> None:
        self.steps += steps
        if self.steps > self.max_steps:
            raise TemplateLimitError(
                f"the template exceeds its work limit of {self.max_steps:,} steps (loop iterations, calls and "
                "range() lengths, TUNEQ_TEMPLATE_MAX_STEPS); loop over less")
        if time.monotonic() > self.deadline:
            raise TemplateLimitError(f"the template exceeds its time limit of {self.max_seconds:g} s "
                                     "(TUNEQ_TEMPLATE_MAX_SECONDS); make it do less work")

    def too_big(self, what: str) -> TemplateLimitError:
        return TemplateLimitError(f"the template exceeds the size limit of {self.max_chars:,} characters "
                                  f"(TUNEQ_TEMPLATE_MAX_OUTPUT_CHARS) {what}")

    def check_size(self, size: int, what: str) -> None:
        if size > self.max_chars:
            raise self.too_big(what)


def new_budget() -> Budget:
    s = get_settings()
    return Budget(max_chars=s.template_max_output_chars, max_steps=s.template_max_steps,
                  max_seconds=s.template_max_seconds)


BUDGET: ContextVar[Budget | None] = ContextVar("tuneq_template_budget", default=None)


def current_budget() -> Budget:
    """The current render's budget; outside a render (Jinja folding constants at compile time) a fresh one."""
    return BUDGET.get() or new_budget()


def weigh(value: Any, limit: int) -> int:
    """The size of `value` as its text would be, roughly: characters of strings, one per element, counting a
    shared reference each time it appears. Stops (raising the size error) as soon as it passes `limit`."""
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, (str, bytes)):
            total += len(item) + 1
        elif isinstance(item, dict):
            total += 1 + len(item)
            if total <= limit:
                stack.extend(item.keys())
                stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += 1 + len(item)
            if total <= limit:
                stack.extend(item)
        elif isinstance(item, int):
            total += 1 + item.bit_length() // 64
        else:
            total += 1
        if total > limit:
            raise current_budget().too_big("with a value it builds")
    return total


def weigh_built(value: Any, what: str = "with a value it builds") -> int:
    budget = current_budget()
    try:
        return weigh(value, budget.max_chars)
    except TemplateLimitError:
        raise budget.too_big(what) from None


# ---- operators ---------------------------------------------------------------------------------------------

_SEQ = (str, bytes, list, tuple)
_NUMBER = re.compile(r"\d+")


def _int_bits(value: int, what: str) -> None:
    if value.bit_length() > MAX_INT_BITS:
        raise TemplateLimitError(f"the template exceeds the integer limit of {MAX_INT_BITS} bits {what}")


def _check_format(fmt: Any, args: Iterable[Any], kwargs: dict[str, Any]) -> None:
    """Before `fmt % args`, `fmt.format(...)` or `|format`: widths and repeated fields cannot blow up."""
    if not isinstance(fmt, (str, bytes)):
        return
    text = fmt.decode("latin-1") if isinstance(fmt, bytes) else fmt
    budget = current_budget()
    widths = 0
    for digits in _NUMBER.findall(text):
        if len(digits) > 9:
            raise budget.too_big("with a format width")
        widths += int(digits)
    values = [*args, *kwargs.values()]
    if len(values) == 1 and isinstance(values[0], (tuple, dict)):
        values = list(values[0].values()) if isinstance(values[0], dict) else list(values[0])
    biggest = max((weigh_built(v) for v in values), default=0)
    starred = sum(abs(v) for v in values if isinstance(v, int) and ("*" in text or "{:{" in text or "{}}" in text))
    fields = text.count("%") + text.count("{")
    budget.check_size(len(text) + widths + starred + fields * biggest, "with a formatted string")


def check_binop(op: str, left: Any, right: Any) -> None:
    """Refuse an operation whose result would exceed the bounds, before computing it."""
    budget = current_budget()
    budget.charge()
    if op == "*":
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, _SEQ) and isinstance(times, int) and times > 0:
                unit = len(seq) if isinstance(seq, (str, bytes)) else weigh_built(seq)
                budget.check_size(unit * times, "with a repetition (*)")
        if isinstance(left, int) and isinstance(right, int):
            _int_bits(1 << min(left.bit_length() + right.bit_length(), MAX_INT_BITS + 1), "with a product")
    elif op == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            if left.bit_length() * right > MAX_INT_BITS + left.bit_length():
                raise TemplateLimitError(f"the template exceeds the integer limit of {MAX_INT_BITS} bits with a "
                                         "power (**)")
    elif op == "+":
        if isinstance(left, (str, bytes)) and isinstance(right, (str, bytes)):
            budget.check_size(len(left) + len(right), "with a concatenation (+)")
        elif isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
            budget.check_size(weigh_built(left) + weigh_built(right), "with a concatenation (+)")
    elif op == "%" and isinstance(left, (str, bytes)):
        _check_format(left, [right], {})


# ---- string methods ----------------------------------------------------------------------------------------

def check_str_method(method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Checks before calling a method of a str/bytes; returns the args to call it with."""
    owner, name = method.__self__, method.__name__
    budget = current_budget()
    if name in ("center", "ljust", "rjust", "zfill") and args and isinstance(args[0], int):
        budget.check_size(args[0], f"with .{name}()")
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(size, int):
            budget.check_size(len(owner) * max(size, 1), "with .expandtabs()")
    elif name == "replace" and len(args) >= 2:
        _check_replace(owner, args[0], args[1], args[2] if len(args) > 2 else None)
    elif name == "join" and args:
        items = _materialize(args[0])
        budget.check_size(sum(weigh_built(i) for i in items) + len(owner) * len(items), "with .join()")
        return (items, *args[1:])
    elif name in ("format", "format_map"):
        _check_format(owner, args, kwargs)
    elif name in ("translate", "maketrans"):
        raise jinja2.exceptions.SecurityError(f"str.{name} is not available in prompt templates")
    return args


def _check_replace(text: Any, old: Any, new: Any, count: Any) -> None:
    if not isinstance(text, (str, bytes)) or not isinstance(old, type(text)) or not isinstance(new, type(text)):
        return
    hits = cast(Any, text).count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    current_budget().check_size(len(text) + hits * max(0, len(new) - len(old)), "with replace")


def _materialize(value: Any) -> list[Any]:
    """An iterable as a list, one step per element."""
    budget = current_budget()
    if isinstance(value, (list, tuple, str)):
        budget.charge(max(1, len(value)))
        return list(value)
    items = []
    for item in value:
        budget.charge()
        items.append(item)
    return items


# ---- filters and globals -------------------------------------------------------------------------------------

def _width(value: Any) -> int:
    return len(value) if isinstance(value, str) else int(value)


def _pre_center(value: Any, width: Any = 80, *_: Any, **__: Any) -> None:
    current_budget().check_size(max(len(str(value)), _width(width)), "with center")


def _pre_indent(value: Any, width: Any = 4, *_: Any, **__: Any) -> None:
    text = str(value)
    current_budget().check_size(len(text) + (text.count("\n") + 1) * _width(width), "with indent")


def _pre_wordwrap(value: Any, width: Any = 79, _breaks: Any = True, wrapstring: Any = None, *_: Any,
                  **kwargs: Any) -> None:
    text, wrap = str(value), kwargs.get("wrapstring", wrapstring) or "\n"
    lines = len(text) // max(int(kwargs.get("width", width)), 1) + text.count("\n") + 1
    current_budget().check_size(len(text) + lines * len(str(wrap)), "with wordwrap")


def _pre_replace(value: Any, old: Any = "", new: Any = "", count: Any = None, *_: Any, **__: Any) -> None:
    _check_replace(str(value), str(old), str(new), count)


def _pre_format(value: Any, *args: Any, **kwargs: Any) -> None:
    _check_format(value, args, kwargs)


def _pre_count(_value: Any, count: Any = 1, *_: Any, **__: Any) -> None:
    if isinstance(count, int):
        current_budget().charge(max(count, 1))


def _pre_sum(_value: Any, attribute: Any = None, start: Any = 0, **kwargs: Any) -> None:
    if not isinstance(kwargs.get("start", start), (int, float)):
        raise TemplateError("sum adds numbers only")


_PRECHECKS: dict[str, Callable[..., None]] = {
    "center": _pre_center, "indent": _pre_indent, "wordwrap": _pre_wordwrap, "replace": _pre_replace,
    "format": _pre_format, "batch": _pre_count, "slice": _pre_count, "sum": _pre_sum,
}


def guard_filter(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that spends a step, runs its check before the work, and weighs what it returns."""
    passes_arg = getattr(fn, "jinja_pass_arg", None) is not None
    pre = _PRECHECKS.get(name)

    @functools.wraps(fn)  # keeps jinja_pass_arg, so Jinja still passes the environment/context
    def guarded(*args: Any, **kwargs: Any) -> Any:
        current_budget().charge()
        head, rest = (args[:1], args[1:]) if passes_arg else ((), args)
        if name == "join" and rest:
            items = _materialize(rest[0])
            sep = rest[1] if len(rest) > 1 else kwargs.get("d", "")
            current_budget().check_size(sum(weigh_built(i) for i in items) + len(str(sep)) * len(items), "with join")
            rest = (items, *rest[1:])
        elif pre is not None:
            pre(*rest, **kwargs)
        result = fn(*head, *rest, **kwargs)
        if isinstance(result, (str, bytes, list, tuple, dict)):
            weigh_built(result, f"with the {name} filter")
        return result

    return guarded


def bounded_range(*args: int) -> range:
    values = range(*args)
    current_budget().charge(max(1, len(values)))
    return values


# Instrumentation filters (names no template would use; Jinja cannot fold them: they take the context).

@jinja2.pass_context
def _steps(_context: Any, iterable: Any) -> Iterator[Any]:
    budget = current_budget()
    for item in iterable:
        budget.charge()
        yield item


@jinja2.pass_context
def _emit(_context: Any, value: Any) -> str:
    budget = current_budget()
    weigh_built(value, "with a value it outputs")
    text = str(value)
    budget.emitted += len(text)
    budget.check_size(budget.emitted // 4, "with what it writes (blocks and macros included, 4x the output)")
    return text


@jinja2.pass_context
def _concat(_context: Any, parts: list[Any]) -> str:
    budget = current_budget()
    budget.charge()
    budget.check_size(sum(weigh_built(p) for p in parts), "with a concatenation (~)")
    return "".join(str(p) for p in parts)


@jinja2.pass_context
def _literal(_context: Any, value: Any) -> Any:
    current_budget().charge()
    weigh_built(value, "with a list or dict")
    return value


INSTRUMENTS = {"_tuneq_steps": _steps, "_tuneq_emit": _emit, "_tuneq_concat": _concat, "_tuneq_literal": _literal}
