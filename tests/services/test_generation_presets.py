"""Preset taxonomies: a generation from `count` alone gets varied prompts and its own seed per item."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import httpx

from app.schemas.generation import GenerationSpec
from app.schemas.taxonomies import TAXONOMIES
from app.services import generation
from tests.fakes.openrouter_server import FakeOpenRouter
from tests.support import wait_until


def prompts(spec: GenerationSpec, n: int) -> list[str]:
    """The user prompts the worker would send, rendered with the worker's own functions."""
    resolved = spec.resolved()
    template = generation.compile_template(resolved["prompt"])
    return [generation.render(template, generation.item_vars(spec, resolved, i)) for i in range(n)]


def test_scaffolding_from_count_alone_gives_distinct_concrete_prompts() -> None:
    rendered = prompts(GenerationSpec(preset="scaffolding", count=200), 200)
    assert len(set(rendered)) >= 0.95 * 200
    assert not any("None" in p for p in rendered)
    spec = GenerationSpec(preset="scaffolding", count=200)
    resolved = spec.resolved()
    chosen = [generation.item_vars(spec, resolved, i) for i in range(200)]
    for name, values in TAXONOMIES["scaffolding"]:  # every value of every axis, about equally often
        counts = Counter(v[name] for v in chosen)
        assert set(counts) == set(values), name
        assert max(counts.values()) <= 1.3 * 200 / len(values) and min(counts.values()) >= 0.7 * 200 / len(values)


def test_the_first_items_cover_distinct_combinations_then_start_a_new_variant() -> None:
    spec = GenerationSpec(preset="scaffolding", count=2000, seed=7)
    resolved = spec.resolved()
    size = math.prod(len(values) for _, values in TAXONOMIES["scaffolding"])
    combos = []
    for i in range(size):
        values = generation.item_vars(spec, resolved, i)
        assert values["variant"] == 0 and values["topic"] == values["subject"]
        combos.append(tuple(values[name] for name, _ in TAXONOMIES["scaffolding"]))
    assert len(set(combos)) == size
    assert generation.item_vars(spec, resolved, size)["variant"] == 1
    assert len(set(prompts(spec, 2000))) == 2000


def test_prompts_depend_only_on_seed_and_index() -> None:
    first = prompts(GenerationSpec(preset="scaffolding", count=50, seed=11), 50)
    assert first == prompts(GenerationSpec(preset="scaffolding", count=50, seed=11), 50)
    other = prompts(GenerationSpec(preset="scaffolding", count=50, seed=12), 50)
    assert other != first and sum(a != b for a, b in zip(first, other, strict=True)) > 25


def test_topics_keep_topic_and_variant_but_vary_the_other_axes() -> None:
    spec = GenerationSpec(preset="scaffolding", topics=["fractions", "recursion"], per_topic=10)
    resolved = spec.resolved()
    values = [generation.item_vars(spec, resolved, i) for i in range(20)]
    assert [(v["topic"], v["variant"]) for v in values[9:11]] == [("fractions", 9), ("recursion", 0)]
    assert all(v["subject"] == v["topic"] for v in values)
    assert len({(v["difficulty"], v["misconception"], v["mentor_move"]) for v in values}) == 20
    assert len(set(prompts(spec, 20))) == 20


def test_qa_varies_domain_and_question_type_and_vars_pin_an_axis() -> None:
    rendered = prompts(GenerationSpec(preset="qa", count=200), 200)
    assert len(set(rendered)) == 200
    spec = GenerationSpec(preset="scaffolding", count=30, vars={"difficulty": "exam level"})
    assert all("Level: exam level." in p for p in prompts(spec, 30))


def test_a_custom_prompt_without_preset_sees_no_taxonomy() -> None:
    spec = GenerationSpec(prompt="{{ topic }}/{{ variant }}/{{ index }}", count=3)
    assert prompts(spec, 3) == ["None/0/0", "None/0/1", "None/0/2"]


def test_each_item_sends_its_own_provider_seed(fake_openrouter: FakeOpenRouter, client: httpx.Client) -> None:
    body = {"kind": "generation", "spec": {"preset": "scaffolding", "count": 12, "seed": 40, "concurrency": 4}}
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    job = client.get(f"/v1/jobs/{job_id}/wait", params={"timeout": 90}).json()
    assert job["status"] == "succeeded", job["error"]

    def sent() -> dict[int, dict[str, Any]]:
        return {int(r["item"].split(":")[1]): r["json"] for r in list(fake_openrouter.requests)
                if r["item"].startswith(job_id + ":")}

    wait_until(lambda: len(sent()) == 12, 10, "the fake to log every item")
    requests = sent()
    assert {i: req["seed"] for i, req in requests.items()} == {i: 40 + i for i in range(12)}
    user_prompts = {req["messages"][-1]["content"] for req in requests.values()}
    assert len(user_prompts) == 12 and not any("about None" in p for p in user_prompts)
