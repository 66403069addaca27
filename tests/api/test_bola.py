"""No team reaches another team's objects (broken object-level authorization), by any route or any spec field.

Both lists are read from /openapi.json, so a route or field added later is covered without editing this test:
every operation whose path takes an id, and every field of a POST /v1/jobs body that takes an id or a
`tinker://` path (found by name). Team B aims them at team A's real objects: every answer is 404 or 422."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.team_objects import TeamObjects, make_team_objects, unthrottled_client
from tests.support import Stack

MIN_ID_OPERATIONS = 12  # the routes with an {…_id} today; fewer means the walk found nothing to test
MIN_ID_FIELDS = 8
ID_FIELD = re.compile(r"(_id$|artifact|checkpoint|training_job|depends_on)")
REFUSED = {404, 422}


@pytest.fixture(scope="module")
def teams(stack: Stack) -> Iterator[tuple[httpx.Client, TeamObjects, httpx.Client, TeamObjects]]:
    with unthrottled_client(stack.base_url) as a, unthrottled_client(stack.base_url) as b:
        yield a, make_team_objects(a), b, make_team_objects(b)  # B's checkpoint: an export body needs one


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _id_fields(spec: dict[str, Any], schema: dict[str, Any], path: tuple[str, ...] = (),
               seen: frozenset[str] = frozenset()) -> Iterator[tuple[tuple[str, ...], bool]]:
    """(path, is_list) of every string or list-of-strings property whose name says it takes an id."""
    ref = schema.get("$ref")
    if ref in seen:
        return
    seen = seen | {ref} if ref else seen
    schema = _resolve(spec, schema)
    for alternative in schema.get("anyOf", []) + schema.get("oneOf", []):
        yield from _id_fields(spec, alternative, path, seen)
    for name, prop in schema.get("properties", {}).items():
        resolved = _resolve(spec, prop)
        variants = [_resolve(spec, v) for v in resolved.get("anyOf", [resolved])]
        if ID_FIELD.search(name):
            if any(v.get("type") == "string" for v in variants):
                yield (*path, name), False
                continue
            if any(v.get("type") == "array" and any(
                    _resolve(spec, item).get("type") == "string"
                    for item in _resolve(spec, v.get("items", {})).get("anyOf", [v.get("items", {})]))
                   for v in variants):
                yield (*path, name), True
                continue
        yield from _id_fields(spec, prop, (*path, name), seen)


def _job_kinds(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    body = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    mapping = body["discriminator"]["mapping"]
    return {kind: _resolve(spec, {"$ref": ref}) for kind, ref in mapping.items()}


def _base_bodies(b: TeamObjects) -> dict[str, dict[str, Any]]:
    """A valid body of each kind made only of team B's own objects."""
    return {
        "test": {"kind": "test", "spec": {"steps": 1}},
        "dataset": {"kind": "dataset", "spec": {"source": {"type": "artifact", "artifact_id": b.artifacts["upload"]}}},
        "generation": {"kind": "generation", "spec": {"prompt": "Say hi.", "source_artifact": b.artifacts["train"],
                                                      "max_tokens": 16}},
        "training": {"kind": "training", "spec": {"train_artifact": b.artifacts["train"], "batch_size": 4,
                                                  "validation_artifact": b.artifacts["validation"], "epochs": 1}},
        "evaluation": {"kind": "evaluation", "spec": {"eval_artifact": b.artifacts["validation"]}},
        "export": {"kind": "export", "spec": {"checkpoint": b.checkpoints["state"]["id"]}},
    }


def _with(body: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in body.items()}
    node = out
    for key in path[:-1]:
        node[key] = dict(node.get(key) or {})
        node = node[key]
    node[path[-1]] = value
    return out


def _fill(template: str, parameters: list[dict[str, Any]], value: str) -> str:
    for p in parameters:
        if p["in"] == "path":
            enum = p.get("schema", {}).get("enum")
            template = template.replace("{" + p["name"] + "}", value if p["name"].endswith("_id") else enum[0])
    return template


def test_no_route_reaches_another_teams_objects(
    stack: Stack, teams: tuple[httpx.Client, TeamObjects, httpx.Client, TeamObjects]
) -> None:
    a, a_objects, b, _ = teams
    spec = httpx.get(f"{stack.base_url}/openapi.json").json()
    leaks: list[str] = []
    operations = 0
    for template, methods in spec["paths"].items():
        for method, op in methods.items():
            parameters = op.get("parameters", [])
            if not any(p["in"] == "path" and p["name"].endswith("_id") for p in parameters):
                continue
            operations += 1
            owner_ok = 0
            for value in a_objects.ids():
                url = _fill(template, parameters, value)
                r = b.request(method, url)
                if r.status_code not in REFUSED:
                    leaks.append(f"{method.upper()} {url} as team B -> {r.status_code} {r.text[:200]}")
                if method == "get":
                    owner_ok += a.get(url, params={"timeout": 0}).status_code == 200
            if method == "get":  # the ids are real: their owner reads each route with one of them
                assert owner_ok, f"team A could not {method.upper()} {template} with any of its own ids"
    assert operations >= MIN_ID_OPERATIONS, f"only {operations} operations with an id in /openapi.json"
    assert leaks == [], "\n".join(leaks)


def test_no_job_spec_field_reaches_another_teams_objects(
    stack: Stack, teams: tuple[httpx.Client, TeamObjects, httpx.Client, TeamObjects]
) -> None:
    _, a_objects, b, b_objects = teams
    spec = httpx.get(f"{stack.base_url}/openapi.json").json()
    bases = _base_bodies(b_objects)
    # Also as output references ({"$ref": "JOB.OUTPUT"}, filled in at release): another team's job is unknown.
    foreign = [*a_objects.ids(), *a_objects.tinker_paths(),
               *({"$ref": f"{job}.{output}"} for job in a_objects.jobs.values()
                 for output in ("id", "train_artifact"))]
    assert a_objects.tinker_paths(), "team A's training job made no checkpoint with a tinker:// path"
    leaks: list[str] = []
    fields: set[str] = set()
    probes = 0
    for kind, schema in _job_kinds(spec).items():
        assert kind in bases, f"no base body for job kind {kind!r}: add one to _base_bodies"
        control = b.post("/v1/jobs", json=bases[kind])  # B's own objects are accepted
        assert control.status_code == 201, (kind, control.text)
        b.post(f"/v1/jobs/{control.json()['id']}/cancel")
        for path, is_list in sorted(set(_id_fields(spec, schema))):
            fields.add(".".join(path))
            for value in foreign:
                body = _with(bases[kind], path, [value] if is_list else value)
                r = b.post("/v1/jobs", json=body)
                probes += 1
                if r.status_code not in REFUSED:
                    leaks.append(f"{kind} {'.'.join(path)}={value!r} as team B -> {r.status_code} {r.text[:200]}")
                    if r.status_code == 201:
                        b.post(f"/v1/jobs/{r.json()['id']}/cancel")
    for expected in ("depends_on", "spec.source.artifact_id", "spec.train_artifact", "spec.validation_artifact",
                     "spec.from_checkpoint", "spec.eval_artifact", "spec.checkpoints", "spec.training_job",
                     "spec.source_artifact", "spec.checkpoint"):
        assert expected in fields, f"{expected} not found among {sorted(fields)}"
    assert len(fields) >= MIN_ID_FIELDS and probes >= len(fields) * len(foreign)
    assert leaks == [], "\n".join(leaks)
