"""Generation rules without a provider: dialogue parsing, templates, presets, submit checks."""

from __future__ import annotations

import pytest

from app.errors import InvalidRequest
from app.schemas.generation import GenerationSpec
from app.services import generation


def test_parse_dialogue_accepts_common_wrappings() -> None:
    expected = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    for reply in ('{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}',
                  '```json\n[{"role": "student", "content": "Q"}, {"role": "mentor", "content": "A"}]\n```',
                  '{"dialogue": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}'):
        assert generation.parse_dialogue(reply) == expected


@pytest.mark.parametrize(("reply", "reason"), [("Sure! Here it is", "not JSON"), ('{"text": "hi"}', "no 'messages'"),
                                               ('{"messages": ["hi"]}', r"messages\[0\] is not an object")])
def test_parse_dialogue_says_what_is_wrong(reply: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        generation.parse_dialogue(reply)


def test_presets_fill_defaults_and_specs_override_them() -> None:
    spec = GenerationSpec(preset="scaffolding", topics=["fractions"], temperature=0.2, vars={"turns": 6})
    resolved = spec.resolved()
    assert resolved["output"] == "dialogue" and resolved["temperature"] == 0.2 and resolved["max_tokens"] == 2048
    template = generation.compile_template(resolved["prompt"])
    prompt = generation.render(template, generation.item_vars(spec, resolved, 0))
    assert "fractions" in prompt and "6 exchanges" in prompt


def test_items_from_topics_and_variants() -> None:
    spec = GenerationSpec(prompt="{{ topic }}/{{ variant }}/{{ index }}", topics=["a", "b"], per_topic=3)
    resolved = spec.resolved()
    template = generation.compile_template(resolved["prompt"])
    assert generation.item_count(spec) == 6
    assert [generation.render(template, generation.item_vars(spec, resolved, i)) for i in (0, 2, 3, 5)] == [
        "a/0/0", "a/2/2", "b/0/3", "b/2/5"]


def test_template_errors_are_reported_at_submit() -> None:
    with pytest.raises(InvalidRequest, match="line 2"):
        generation.check_spec(GenerationSpec(prompt="ok\n{% if %}", count=1))
    with pytest.raises(InvalidRequest, match="missing"):
        generation.check_spec(GenerationSpec(prompt="{{ missing }}", count=1))


def test_missing_openrouter_key_is_a_422(backend: dict[str, str]) -> None:
    from app.db import session_scope
    from app.schemas.jobs import GenerationJobCreate
    from app.services import auth
    from app.services import jobs as jobs_service
    from app.settings import Settings

    body = GenerationJobCreate(kind="generation", spec=GenerationSpec(prompt="x", count=1))
    settings = Settings(openrouter_api_key=None)
    with session_scope() as session, pytest.raises(InvalidRequest, match="OPENROUTER_API_KEY"):
        team = auth.get_or_create_team(session, "gen-no-key")
        jobs_service.submit(session, caller=auth.Caller(team.id, "k", ("jobs:write",)), body=body,
                            spec=body.spec.model_dump(mode="json"), kind="generation", idempotency_key=None,
                            settings=settings)
