"""Template bounds: time a normal render and the time to reject each known template bomb.

Run: .venv/bin/python -m bench.templates
"""

from __future__ import annotations

import json
import resource
import time

from jinja2.sandbox import SandboxedEnvironment

from app.services.generation import compile_template, render
from app.services.templates import TemplateError

NORMAL = ("Write a dialogue of {{ turns }} exchanges between a student who is stuck on a problem about "
          "{{ topic }} and a mentor. {% for h in hints %}Hint {{ loop.index }}: {{ h|upper }}. {% endfor %}"
          "Variant {{ variant }}.")
NORMAL_VARS = {"turns": 4, "topic": "fractions", "variant": 0, "hints": ["draw it", "use a number line"]}

BOMBS = {
    "'x' * 10**9": "{{ 'x' * 1000000000 }}",
    "nested range(99999)": ("{% for a in range(99999) %}{% for b in range(99999) %}{% endfor %}{% endfor %}"),
    "9**9**9 (Jinja: (9**9)**9)": "{{ 9**9**9 }}",
    "9**(9**9)": "{{ 9**(9**9) }}",
    "[0]*10**9": "{{ [0]*10**9 }}",
    "center(10**9)": "{{ 'x'|center(10**9) }}",
    "3 nested loops, 1000 items": ("{% for a in items %}{% for b in items %}{% for c in items %}{% endfor %}"
                                   "{% endfor %}{% endfor %}"),
    "10 MB output": "{% for i in range(10000) %}{{ 'x' * 1000 }}{% endfor %}",
    "aliasing tower": ("{% set a = ['xxxxxxxxxx'] * 10 %}{% set b = [a,a,a,a,a,a,a,a,a,a] %}"
                       "{% set c = [b,b,b,b,b,b,b,b,b,b] %}{% set d = [c,c,c,c,c,c,c,c,c,c] %}"
                       "{% set e = [d,d,d,d,d,d,d,d,d,d] %}{{ e }}"),
    "doubling ~": "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "format width": "{{ '%1000000000s'|format(1) }}",
    "exponential macro": ("{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(40) }}"),
    "set-block buffer": "{% set x %}{% for i in range(100000) %}xxxxxxxxxxxxxxxxxxxx{% endfor %}{% endset %}",
    "set-block 100 MB": "{% set x %}{% for i in range(1000) %}{{ 'x' * 100000 }}{% endfor %}{% endset %}",
    "1/0": "{{ 1/0 }}",
    "range(100001)": "{% for i in range(100001) %}{% endfor %}",
}


def _per_render_us(render_once: object, n: int = 2000) -> float:
    start = time.perf_counter()
    for _ in range(n):
        render_once()  # type: ignore[operator]
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    template = compile_template(NORMAL)
    plain = SandboxedEnvironment().from_string(NORMAL)  # the floor: Jinja's sandbox with no bounds
    bounded_us = _per_render_us(lambda: render(template, NORMAL_VARS))
    plain_us = _per_render_us(lambda: plain.render(**NORMAL_VARS))
    print(f"normal render: {bounded_us:.0f} µs bounded, {plain_us:.0f} µs plain sandbox")
    refused, worst_ms = 0, 0.0
    for name, text in BOMBS.items():
        start = time.perf_counter()
        try:
            render(compile_template(text), {"items": list(range(1000))})
            outcome = "rendered"
        except TemplateError as exc:
            outcome = str(exc)
            refused += 1
        took = time.perf_counter() - start
        worst_ms = max(worst_ms, took * 1000)
        print(f"{name:28} {took * 1000:8.1f} ms  {outcome[:110]}")
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"bench": "templates", "render_us": round(bounded_us, 1),
                      "render_vs_plain_sandbox": round(bounded_us / plain_us, 2), "bombs": len(BOMBS),
                      "bombs_refused": refused, "slowest_refusal_ms": round(worst_ms, 1),
                      "max_rss_mb": round(rss_mb)}))

if __name__ == "__main__":
    main()
