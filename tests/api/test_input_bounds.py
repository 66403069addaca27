"""Every bad input is a 4xx naming the field, never a 5xx, on SQLite and PostgreSQL alike: integers past 64
bits, NUL and control characters, nesting, time filters at the calendar's edges, unknown kinds, bad cursors,
and template bombs (refused at submit while the API keeps answering)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import make_client
from tests.support import Stack

BIG = 2**64 + 1
GENERATION = {"kind": "generation", "spec": {"count": 1, "prompt": "Teach {{ index }}."}}
TRAINING = {"kind": "training", "spec": {"train_artifact": "art_x"}}
DATASET = {"kind": "dataset", "spec": {"source": {"type": "artifact", "artifact_id": "art_x"}}}


def _with(body: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {**body, "spec": {**body["spec"], **spec}}


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


BAD_BODIES = {
    "generation seed": (_with(GENERATION, seed=BIG), "seed"),
    "negative seed": (_with(GENERATION, seed=-1), "seed"),
    "training seed": (_with(TRAINING, seed=BIG), "seed"),
    "dataset seed": (_with(DATASET, seed=BIG), "seed"),
    "warmup_steps": (_with(TRAINING, warmup_steps=BIG), "warmup_steps"),
    "save_every": (_with(TRAINING, save_every=BIG), "save_every"),
    "eval_every": (_with(TRAINING, eval_every=BIG), "eval_every"),
    "validation_rows": (_with(DATASET, validation_rows=BIG), "validation_rows"),
    "max_examples": (_with(DATASET, max_examples=BIG), "max_examples"),
    "int in vars": (_with(GENERATION, vars={"n": [1, {"m": BIG}]}), "vars.n[1].m"),
    "deep vars": (_with(GENERATION, vars={"v": _nested(12)}), "nested deeper than 8"),
    "very deep vars": ('{"kind": "generation", "spec": {"count": 1, "prompt": "x", "vars": '
                       + '{"a": ' * 400 + "1" + "}" * 400 + "}}", "nested deeper than 8"),
    "large vars": (_with(GENERATION, vars={"v": "x" * 70_000}), "bytes as JSON"),
    "NUL in a label value": ({**GENERATION, "labels": {"team": "a\x00b"}}, "labels"),
    "NUL in a label name": ({**GENERATION, "labels": {"a\x00": "b"}}, "labels"),
    "newline in a label": ({**GENERATION, "labels": {"team": "a\nb"}}, "control characters"),
    "NUL in the prompt": (_with(GENERATION, prompt="hi\x00"), "prompt"),
    "NUL in a topic": ({"kind": "generation", "spec": {"topics": ["a\x00"], "prompt": "x"}}, "topics[0]"),
    "NUL in vars": (_with(GENERATION, vars={"k": ["ok", "no\x00"]}), "vars.k[1]"),
    "long topic": ({"kind": "generation", "spec": {"topics": ["t" * 3000], "prompt": "x"}}, "topics"),
    "weight_decay past its bound": (_with(TRAINING, adam={"weight_decay": 1e300}), "weight_decay"),
    "long base_model": (_with(TRAINING, base_model="m" * 300), "base_model"),
}


def test_json_deeper_than_the_parser_goes_is_a_4xx(client: httpx.Client) -> None:
    body = '{"kind": "generation", "spec": {"count": 1, "prompt": "x", "vars": ' + '{"a": ' * 5000 + "1"
    r = client.post("/v1/jobs", content=body + "}" * 5000 + "}}", headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text


@pytest.mark.parametrize(("body", "field"), BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_bad_bodies_are_422_naming_the_field(client: httpx.Client, body: dict[str, Any] | str, field: str) -> None:
    if isinstance(body, str):  # deeper than a JSON encoder goes
        r = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    else:
        r = client.post("/v1/jobs", json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert field in r.json()["detail"], r.json()["detail"]


TEMPLATE_ERRORS = {
    "{{ 1/0 }}": ("spec.prompt", "ZeroDivisionError"),
    "{{ nope }}": ("spec.prompt", "undefined variable"),
    "{% for i in range(100001) %}{% endfor %}": ("spec.prompt", "exceeds its work limit"),
    "{{ 'a' + 1 }}": ("spec.prompt", "TypeError"),
    "{% for %}": ("spec.prompt", "template error on line 1"),
}


@pytest.mark.parametrize(("prompt", "expected"), TEMPLATE_ERRORS.items())
def test_template_errors_are_422_naming_the_template(client: httpx.Client, prompt: str,
                                                    expected: tuple[str, str]) -> None:
    r = client.post("/v1/jobs", json=_with(GENERATION, prompt=prompt))
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail.startswith(expected[0] + ":") and expected[1] in detail, detail
    r = client.post("/v1/jobs", json=_with(GENERATION, prompt="ok", system=prompt))
    assert r.status_code == 422 and r.json()["detail"].startswith("spec.system:"), r.text


BOMBS = [
    "{{ 'x' * 1000000000 }}",
    "{% for a in range(99999) %}{% for b in range(99999) %}{% endfor %}{% endfor %}",
    "{% for a in items %}{% for b in items %}{% for c in items %}{% endfor %}{% endfor %}{% endfor %}",
    "{{ 9**(9**9) }}",
    "{{ [0]*10**9 }}",
    "{{ 'x'|center(10**9) }}",
    "{% for i in range(10000) %}{{ 'x' * 1000 }}{% endfor %}",
]


@pytest.fixture
def reader(stack: Stack) -> Iterator[list[int]]:
    """GET /v1/jobs every 50 ms with its own key while the test runs; yields the statuses it saw."""
    statuses: list[int] = []
    stop, reading = threading.Event(), threading.Event()

    def poll() -> None:
        with make_client(stack.base_url) as c:
            while True:
                statuses.append(c.get("/v1/jobs", params={"limit": 1}).status_code)
                reading.set()
                if stop.wait(0.05):
                    return

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    assert reading.wait(30), "the reader never got an answer"  # reading before the test starts, not after it
    yield statuses
    stop.set()
    thread.join(timeout=15)


def test_template_bombs_are_422_at_submit_while_the_api_keeps_answering(stack: Stack, reader: list[int]) -> None:
    items = list(range(1000))
    results: list[httpx.Response] = []

    def submit_all() -> None:  # each thread with its own key: the per-key rate limit is not under test
        with make_client(stack.base_url) as c:
            for prompt in BOMBS:
                r = c.post("/v1/jobs", json=_with(GENERATION, prompt=prompt, vars={"items": items}))
                if r.status_code == 429:
                    time.sleep(float(r.headers.get("retry-after", "1")))
                    r = c.post("/v1/jobs", json=_with(GENERATION, prompt=prompt, vars={"items": items}))
                results.append(r)

    threads = [threading.Thread(target=submit_all) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == len(BOMBS) * 4
    for r in results:
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert detail.startswith("spec.prompt: the template exceeds"), detail
    assert reader and set(reader) == {200}, reader


@pytest.mark.parametrize("created_after", [
    "0001-01-01T00:00:00", "0001-01-01T00:00:00+01:00", "0001-01-01T00:00:00-23:59",
    "9999-12-31T23:59:59.999999+00:00", "9999-12-31T23:59:59.999999-23:59", "9999-12-31T23:59:59",
    "2020-01-01T00:00:00Z",
])
def test_created_after_anywhere_in_the_calendar_is_answered(client: httpx.Client, created_after: str) -> None:
    job = client.post("/v1/jobs", json={"kind": "test"}).json()
    r = client.get("/v1/jobs", params={"created_after": created_after})
    assert r.status_code == 200, r.text
    ids = [j["id"] for j in r.json()["data"]]
    assert (job["id"] in ids) == created_after.startswith(("0001", "2020")), (created_after, ids)


@pytest.mark.parametrize(("params", "field"), [
    ({"label": "team:a\x00b"}, "label"),
    ({"label": "te\x00am:ab"}, "label"),
    ({"label": "team:a\tb"}, "label"),
    ({"label": "no-colon"}, "label"),
    ({"kind": "nonsense"}, "kind"),
    ({"cursor": "garbage'; --"}, "cursor"),
    ({"cursor": "job_\x00"}, "cursor"),
    ({"cursor": "x" * 500}, "cursor"),
])
def test_bad_list_filters_are_422_naming_the_parameter(client: httpx.Client, params: dict[str, str],
                                                       field: str) -> None:
    r = client.get("/v1/jobs", params=params)
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"], r.json()["detail"]


def test_label_filter_and_cursor_still_work(client: httpx.Client) -> None:
    jobs = [client.post("/v1/jobs", json={"kind": "test", "labels": {"team": "x y"}}).json() for _ in range(3)]
    page = client.get("/v1/jobs", params={"label": "team:x y", "limit": 2}).json()
    assert [j["id"] for j in page["data"]] == [jobs[2]["id"], jobs[1]["id"]] and page["has_more"]
    rest = client.get("/v1/jobs", params={"label": "team:x y", "cursor": page["next_cursor"]}).json()
    assert [j["id"] for j in rest["data"]] == [jobs[0]["id"]]
    assert client.get("/v1/jobs", params={"kind": "test"}).status_code == 200


@pytest.mark.parametrize("method,route", [
    ("GET", "/v1/jobs/{}"), ("GET", "/v1/jobs/{}/events"), ("GET", "/v1/jobs/{}/wait?timeout=0"),
    ("GET", "/v1/jobs/{}/items"), ("GET", "/v1/jobs/{}/metrics"), ("GET", "/v1/jobs/{}/checkpoints"),
    ("POST", "/v1/jobs/{}/cancel"), ("POST", "/v1/jobs/{}/resume"), ("GET", "/v1/artifacts/{}"),
    ("DELETE", "/v1/artifacts/{}"),
])
def test_an_id_with_nul_or_controls_is_not_found(client: httpx.Client, method: str, route: str) -> None:
    """PostgreSQL refuses NUL in text: such an id must still be an ordinary 404, not a 5xx."""
    for bad in ("job_%00x", "job_%01", "%E2%80%AE"):
        r = client.request(method, route.format(bad))
        assert r.status_code in (404, 422), (route, bad, r.status_code, r.text)
