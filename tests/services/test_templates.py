"""Prompt templates are bounded: bombs stop with an error naming the bound, runtime errors name themselves,
and ordinary templates render as Jinja would."""

from __future__ import annotations

import pytest

from app.errors import InvalidRequest
from app.schemas.generation import GenerationSpec
from app.services import generation
from app.services.templates import TemplateError, TemplateLimitError

BOMBS = {
    "repeat a string 10**9 times": "{{ 'x' * 1000000000 }}",
    "nested range(99999) loops": "{% for a in range(99999) %}{% for b in range(99999) %}{% endfor %}{% endfor %}",
    "a power past 4096 bits": "{{ 9**(9**9) }}",
    "a list of 10**9 zeros": "{{ [0]*10**9 }}",
    "center to 10**9": "{{ 'x'|center(10**9) }}",
    "three nested loops over 1,000 items": ("{% for a in items %}{% for b in items %}{% for c in items %}"
                                            "{% endfor %}{% endfor %}{% endfor %}"),
    "a loop writing 10 MB": "{% for i in range(10000) %}{{ 'x' * 1000 }}{% endfor %}",
    "a block buffering 100 MB": "{% set x %}{% for i in range(1000) %}{{ 'x' * 100000 }}{% endfor %}{% endset %}",
    "shared references ten deep": ("{% set a = ['xxxxxxxxxx'] * 10 %}{% set b = [a,a,a,a,a,a,a,a,a,a] %}"
                                   "{% set c = [b,b,b,b,b,b,b,b,b,b] %}{% set d = [c,c,c,c,c,c,c,c,c,c] %}"
                                   "{% set e = [d,d,d,d,d,d,d,d,d,d] %}{{ e }}"),
    "a string doubled 40 times": ("{% set ns = namespace(s='x') %}{% for i in range(40) %}"
                                  "{% set ns.s = ns.s ~ ns.s %}{% endfor %}"),
    "a format width of 10**9": "{{ '%1000000000s'|format(1) }}",
    "str.ljust to 10**9": "{{ 'x'.ljust(1000000000) }}",
    "a macro calling itself twice per level": ("{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}"
                                               "{% endmacro %}{{ f(40) }}"),
    "join of a huge repetition": "{{ (['y' * 1000] * 1000)|join(',') }}",
    "indent to 10**9": "{{ 'a\nb'|indent(1000000000) }}",
}


@pytest.mark.parametrize("text", BOMBS.values(), ids=BOMBS.keys())
def test_bombs_stop_with_the_bound_they_exceed(text: str) -> None:
    template = generation.compile_template(text)
    with pytest.raises(TemplateLimitError, match=r"the template exceeds (the|its) \w+ limit"):
        generation.render(template, {"items": list(range(1000))})


RUNTIME_ERRORS = {
    "{{ 1/0 }}": "ZeroDivisionError",
    "{{ nope }}": "undefined variable",
    "{{ 1 + 'a' }}": "TypeError",
    "{{ 2.0 ** 100000 }}": "OverflowError",
    "{{ ''.__class__ }}": "undefined|unsafe|forbids",
    "{{ [1].append(2) }}": "forbids|unsafe|undefined",
}


@pytest.mark.parametrize(("text", "reason"), RUNTIME_ERRORS.items())
def test_runtime_errors_are_template_errors_with_their_reason(text: str, reason: str) -> None:
    with pytest.raises(TemplateError, match=reason):
        generation.render(generation.compile_template(text), {})


def test_ordinary_templates_render_as_jinja_does() -> None:
    text = ("Topic {{ topic|upper }}{% for h in hints %}, hint {{ loop.index }}: {{ h|title }}{% endfor %}. "
            "{{ '%-6s|' % 'ab' }}{{ '{:>4}'.format(7) }} {{ (words * 2)|join('-') }} {{ 2**10 }} "
            "{{ {'a': 1}['a'] + range(3)|sum }}{% set ns = namespace(n=0) %}{% for i in range(5) %}"
            "{% set ns.n = ns.n + i %}{% endfor %} {{ ns.n }} {{ 'x' ~ seed }}")
    out = generation.render(generation.compile_template(text),
                            {"topic": "fractions", "hints": ["draw it", "halve it"], "words": ["a", "b"], "seed": 7})
    assert out == ("Topic FRACTIONS, hint 1: Draw It, hint 2: Halve It. ab    |   7 a-b-a-b 1024 4 10 x7")


def test_output_up_to_the_limit_renders(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.settings import get_settings

    monkeypatch.setattr(get_settings(), "template_max_output_chars", 5000)
    template = generation.compile_template("{% for i in range(n) %}x{% endfor %}")
    assert generation.render(template, {"n": 5000}) == "x" * 5000
    with pytest.raises(TemplateLimitError, match="5,000 characters"):
        generation.render(template, {"n": 5001})


def test_check_spec_names_the_field_and_the_problem() -> None:
    bomb = GenerationSpec(count=1, prompt="{{ 'x' * 1000000000 }}")
    with pytest.raises(InvalidRequest, match=r"^spec\.prompt: the template exceeds the size limit"):
        generation.check_spec(bomb)
    broken_system = GenerationSpec(count=1, prompt="ok", system="{{ 1/0 }}")
    with pytest.raises(InvalidRequest, match=r"^spec\.system: the template failed: ZeroDivisionError"):
        generation.check_spec(broken_system)
    too_deep = GenerationSpec(count=1, prompt="{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}")
    with pytest.raises(InvalidRequest, match=r"^spec\.prompt: "):
        generation.check_spec(too_deep)
