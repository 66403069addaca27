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
guard filters of app/services/template_budget.py); everything else is the sandbox's own code.
"""

from __future__ import annotations

from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from app.services.template_budget import (
    BUDGET,
    INSTRUMENTS,
    TemplateError,
    TemplateLimitError,
    bounded_range,
    check_binop,
    check_str_method,
    current_budget,
    guard_filter,
    new_budget,
    weigh_built,
)

__all__ = ["ENV", "TemplateError", "TemplateLimitError", "render_bounded"]


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, with every operator, call, loop and output checked against the render's `Budget`."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self) -> None:
        super().__init__(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
        self.filters = {name: guard_filter(name, fn) for name, fn in self.filters.items()}
        self.filters.update(INSTRUMENTS)
        self.globals.pop("lipsum", None)
        self.globals["range"] = bounded_range

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (Jinja's API)
        current_budget().charge()
        if isinstance(getattr(__obj, "__self__", None), (str, bytes)) and hasattr(__obj, "__name__"):
            args = check_str_method(__obj, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        if isinstance(result, (str, bytes, list, tuple, dict)):
            weigh_built(result, "with what a call returns")
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
    token = BUDGET.set(budget)
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
        BUDGET.reset(token)
