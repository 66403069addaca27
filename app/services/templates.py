"""Bounded Jinja templates for generation prompts (docs/architecture.md, "Pipelines and resumability").

A prompt template is user input that runs inside the API (at submit) and in workers (per item), so one render
must stay small and short whatever the template says. Python gives no way to stop a thread, so the bounds are
enforced from inside the render, at every place where work or memory can grow:

* **steps**: every loop iteration, every call (macros included), every filter and every `range()` (by its
  length, when it is created) spends from one budget per render (`TUNEQ_TEMPLATE_MAX_STEPS`), so nested loops
  are bounded by their product;
* **time**: each step also checks the render's deadline (`TUNEQ_TEMPLATE_MAX_SECONDS`); between two steps a
  single operation works on values no bigger than the size bound, so it cannot run long;
* **size**: `*`, `**`, `+`, `%`, `~`, list/tuple/dict literals, string-growing filters and string methods
  (`center`, `indent`, `wordwrap`, `replace`, `join`, `format`, `ljust`, …) are checked *before* they build
  their result, and any value a template builds is weighed (shared references count each time they appear,
  so `[a, a, a]` nested ten deep cannot hide a billion elements) against `TUNEQ_TEMPLATE_MAX_OUTPUT_CHARS`;
  integers stay within `MAX_INT_BITS`; the output is produced with `generate()` and stops past the bound.

The environment is Jinja's immutable sandbox (no `append`/`update` on lists and dicts) with `StrictUndefined`.
The template's syntax tree is instrumented at compile time (loops, outputs, `~` and literals go through the
guard filters below); everything else is the sandbox's own code.
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
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

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


_BUDGET: ContextVar[Budget | None] = ContextVar("tuneq_template_budget", default=None)


def _budget() -> Budget:
    """The current render's budget; outside a render (Jinja folding constants at compile time) a fresh one."""
    return _BUDGET.get() or new_budget()


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
            raise _budget().too_big("with a value it builds")
    return total


def _weigh(value: Any, what: str = "with a value it builds") -> int:
    budget = _budget()
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
    budget = _budget()
    widths = 0
    for digits in _NUMBER.findall(text):
        if len(digits) > 9:
            raise budget.too_big("with a format width")
        widths += int(digits)
    values = [*args, *kwargs.values()]
    if len(values) == 1 and isinstance(values[0], (tuple, dict)):
        values = list(values[0].values()) if isinstance(values[0], dict) else list(values[0])
    biggest = max((_weigh(v) for v in values), default=0)
    starred = sum(abs(v) for v in values if isinstance(v, int) and ("*" in text or "{:{" in text or "{}}" in text))
    fields = text.count("%") + text.count("{")
    budget.check_size(len(text) + widths + starred + fields * biggest, "with a formatted string")


def _binop(op: str, left: Any, right: Any) -> None:
    """Refuse an operation whose result would exceed the bounds, before computing it."""
    budget = _budget()
    budget.charge()
    if op == "*":
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, _SEQ) and isinstance(times, int) and times > 0:
                unit = len(seq) if isinstance(seq, (str, bytes)) else _weigh(seq)
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
            budget.check_size(_weigh(left) + _weigh(right), "with a concatenation (+)")
    elif op == "%" and isinstance(left, (str, bytes)):
        _check_format(left, [right], {})


# ---- string methods ----------------------------------------------------------------------------------------

def _check_str_method(method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Checks before calling a method of a str/bytes; returns the args to call it with."""
    owner, name = method.__self__, method.__name__
    budget = _budget()
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
        budget.check_size(sum(_weigh(i) for i in items) + len(owner) * len(items), "with .join()")
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
    _budget().check_size(len(text) + hits * max(0, len(new) - len(old)), "with replace")


def _materialize(value: Any) -> list[Any]:
    """An iterable as a list, one step per element."""
    budget = _budget()
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
    _budget().check_size(max(len(str(value)), _width(width)), "with center")


def _pre_indent(value: Any, width: Any = 4, *_: Any, **__: Any) -> None:
    text = str(value)
    _budget().check_size(len(text) + (text.count("\n") + 1) * _width(width), "with indent")


def _pre_wordwrap(value: Any, width: Any = 79, _breaks: Any = True, wrapstring: Any = None, *_: Any,
                  **kwargs: Any) -> None:
    text, wrap = str(value), kwargs.get("wrapstring", wrapstring) or "\n"
    lines = len(text) // max(int(kwargs.get("width", width)), 1) + text.count("\n") + 1
    _budget().check_size(len(text) + lines * len(str(wrap)), "with wordwrap")


def _pre_replace(value: Any, old: Any = "", new: Any = "", count: Any = None, *_: Any, **__: Any) -> None:
    _check_replace(str(value), str(old), str(new), count)


def _pre_format(value: Any, *args: Any, **kwargs: Any) -> None:
    _check_format(value, args, kwargs)


def _pre_count(_value: Any, count: Any = 1, *_: Any, **__: Any) -> None:
    if isinstance(count, int):
        _budget().charge(max(count, 1))


def _pre_sum(_value: Any, attribute: Any = None, start: Any = 0, **kwargs: Any) -> None:
    if not isinstance(kwargs.get("start", start), (int, float)):
        raise TemplateError("sum adds numbers only")


_PRECHECKS: dict[str, Callable[..., None]] = {
    "center": _pre_center, "indent": _pre_indent, "wordwrap": _pre_wordwrap, "replace": _pre_replace,
    "format": _pre_format, "batch": _pre_count, "slice": _pre_count, "sum": _pre_sum,
}


def _guard_filter(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that spends a step, runs its check before the work, and weighs what it returns."""
    passes_arg = getattr(fn, "jinja_pass_arg", None) is not None
    pre = _PRECHECKS.get(name)

    @functools.wraps(fn)  # keeps jinja_pass_arg, so Jinja still passes the environment/context
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _budget().charge()
        head, rest = (args[:1], args[1:]) if passes_arg else ((), args)
        if name == "join" and rest:
            items = _materialize(rest[0])
            sep = rest[1] if len(rest) > 1 else kwargs.get("d", "")
            _budget().check_size(sum(_weigh(i) for i in items) + len(str(sep)) * len(items), "with join")
            rest = (items, *rest[1:])
        elif pre is not None:
            pre(*rest, **kwargs)
        result = fn(*head, *rest, **kwargs)
        if isinstance(result, (str, bytes, list, tuple, dict)):
            _weigh(result, f"with the {name} filter")
        return result

    return guarded


def _range(*args: int) -> range:
    values = range(*args)
    _budget().charge(max(1, len(values)))
    return values


# Instrumentation filters (names no template would use; Jinja cannot fold them: they take the context).

@jinja2.pass_context
def _steps(_context: Any, iterable: Any) -> Iterator[Any]:
    budget = _budget()
    for item in iterable:
        budget.charge()
        yield item


@jinja2.pass_context
def _emit(_context: Any, value: Any) -> str:
    budget = _budget()
    _weigh(value, "with a value it outputs")
    text = str(value)
    budget.emitted += len(text)
    budget.check_size(budget.emitted // 4, "with what it writes (blocks and macros included, 4x the output)")
    return text


@jinja2.pass_context
def _concat(_context: Any, parts: list[Any]) -> str:
    budget = _budget()
    budget.charge()
    budget.check_size(sum(_weigh(p) for p in parts), "with a concatenation (~)")
    return "".join(str(p) for p in parts)


@jinja2.pass_context
def _literal(_context: Any, value: Any) -> Any:
    _budget().charge()
    _weigh(value, "with a list or dict")
    return value


_INSTRUMENTS = {"_tuneq_steps": _steps, "_tuneq_emit": _emit, "_tuneq_concat": _concat, "_tuneq_literal": _literal}


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, with every operator, call, loop and output checked against the render's `Budget`."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self) -> None:
        super().__init__(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
        self.filters = {name: _guard_filter(name, fn) for name, fn in self.filters.items()}
        self.filters.update(_INSTRUMENTS)
        self.globals.pop("lipsum", None)
        self.globals["range"] = _range

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (Jinja's API)
        _budget().charge()
        if isinstance(getattr(__obj, "__self__", None), (str, bytes)) and hasattr(__obj, "__name__"):
            args = _check_str_method(__obj, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        if isinstance(result, (str, bytes, list, tuple, dict)):
            _weigh(result, "with what a call returns")
        return result

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        return _instrument(super()._parse(source, name, filename), self)


def _wrap(node: nodes.Expr, name: str, env: jinja2.Environment) -> nodes.Expr:
    wrapped = nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)
    wrapped.set_environment(env)
    return wrapped


def _instrument(node: Any, env: jinja2.Environment) -> Any:
    """Route loops, outputs, `~` and literals through the guard filters (post-order, in place)."""
    for name, value in node.iter_fields():
        if isinstance(value, list):
            setattr(node, name, [_child(node, name, v, env) if isinstance(v, nodes.Node) else v for v in value])
        elif isinstance(value, nodes.Node):
            setattr(node, name, _child(node, name, value, env))
    return node


def _child(parent: nodes.Node, field_name: str, child: nodes.Node, env: jinja2.Environment) -> nodes.Node:
    child = _instrument(child, env)
    if isinstance(parent, nodes.For) and field_name == "iter":
        return _wrap(child, "_tuneq_steps", env)  # type: ignore[arg-type]
    if isinstance(parent, nodes.Output) and field_name == "nodes":
        if isinstance(child, nodes.TemplateData):
            child = nodes.Const(child.data, lineno=child.lineno)
        return _wrap(child, "_tuneq_emit", env)  # type: ignore[arg-type]
    if isinstance(child, nodes.Concat):
        parts = nodes.List(child.nodes, lineno=child.lineno)
        parts.set_environment(env)
        return _wrap(parts, "_tuneq_concat", env)
    if isinstance(child, (nodes.List, nodes.Dict)) or (isinstance(child, nodes.Tuple) and child.ctx == "load"):
        return _wrap(child, "_tuneq_literal", env)
    return child


ENV = BoundedEnvironment()


def render_bounded(template: jinja2.Template, values: dict[str, Any]) -> str:
    """Render within a fresh budget. Raises `TemplateError` (a ValueError) saying what went wrong."""
    budget = new_budget()
    token = _BUDGET.set(budget)
    try:
        parts: list[str] = []
        size = 0
        for piece in template.generate(**values):
            size += len(piece)
            budget.check_size(size, "with its output")
            parts.append(piece)
        return "".join(parts)
    except TemplateError:
        raise
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"the template uses an undefined variable: {exc.message}") from None
    except jinja2.exceptions.SecurityError as exc:
        raise TemplateError(f"the template does something the sandbox forbids: {exc}") from None
    except RecursionError:
        raise TemplateError("the template recurses too deeply") from None
    except MemoryError:
        raise budget.too_big("(out of memory)") from None
    except Exception as exc:  # the template's own runtime error: 1/0, a type error, an overflow...
        raise TemplateError(f"the template failed: {type(exc).__name__}: {str(exc)[:300]}") from None
    finally:
        _BUDGET.reset(token)
