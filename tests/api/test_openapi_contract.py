"""/openapi.json tells the truth: bearer auth on every /v1 route, and the problem+json error bodies the API
really sends (not FastAPI's HTTPValidationError)."""

from __future__ import annotations

from typing import Any

import httpx
import jsonschema_rs

from tests.support import Stack

PUBLIC = {"/healthz", "/readyz"}


def _spec(stack: Stack) -> dict[str, Any]:
    r = httpx.get(f"{stack.base_url}/openapi.json")
    assert r.status_code == 200
    return r.json()


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, p, op) for p, ops in spec["paths"].items() for m, op in ops.items()]


def _problem_validator(spec: dict[str, Any], method: str, path: str, status: int) -> Any:
    response = spec["paths"][path][method]["responses"][str(status)]
    ref = response["content"]["application/problem+json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/Problem"
    return jsonschema_rs.validator_for(spec["components"]["schemas"]["Problem"])


def test_every_v1_operation_declares_bearer_auth_and_problem_errors(stack: Stack) -> None:
    spec = _spec(stack)
    scheme = spec["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    v1 = [(m, p, op) for m, p, op in _operations(spec) if p.startswith("/v1/")]
    assert len(v1) >= 15
    for method, path, op in v1:
        assert op.get("security") == [{"bearerAuth": []}], (method, path)
        expected = {401, 403, 422, 429, 503} | ({404} if "{" in path else set())
        for status in expected:
            response = op["responses"].get(str(status))
            assert response is not None, (method, path, status)
            assert set(response["content"]) == {"application/problem+json"}, (method, path, status)
            assert response["content"]["application/problem+json"]["schema"] == {
                "$ref": "#/components/schemas/Problem"}, (method, path, status)
    for method, path, op in _operations(spec):
        if path in PUBLIC:
            assert "security" not in op and "401" not in op["responses"], (method, path)


def test_real_error_bodies_match_the_declared_schema(stack: Stack, client: httpx.Client) -> None:
    spec = _spec(stack)

    unauthenticated = httpx.get(f"{stack.base_url}/v1/jobs")
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["content-type"] == "application/problem+json"
    assert unauthenticated.headers["www-authenticate"] == "Bearer"
    _problem_validator(spec, "get", "/v1/jobs", 401).validate(unauthenticated.json())

    invalid = client.post("/v1/jobs", json={"kind": "test", "spec": {"nope": 1}, "max_attempts": "many"})
    assert invalid.status_code == 422
    assert invalid.headers["content-type"] == "application/problem+json"
    body = invalid.json()
    _problem_validator(spec, "post", "/v1/jobs", 422).validate(body)
    assert body["errors"] and body["code"] == "invalid_request"

    missing = client.get("/v1/jobs/job_doesnotexist")
    assert missing.status_code == 404
    _problem_validator(spec, "get", "/v1/jobs/{job_id}", 404).validate(missing.json())

    malformed = client.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert malformed.status_code == 400
    _problem_validator(spec, "post", "/v1/jobs", 400).validate(malformed.json())


def test_checkpoint_routes_declare_what_only_they_answer(stack: Stack) -> None:
    spec = _spec(stack)
    chat = spec["paths"]["/v1/checkpoints/{ref}/chat"]["post"]
    export = spec["paths"]["/v1/checkpoints/{checkpoint_id}/export"]["post"]
    for op, status in ((chat, "504"), (export, "409")):
        assert op["responses"][status]["content"]["application/problem+json"]["schema"] == {
            "$ref": "#/components/schemas/Problem"}
    assert "200" in chat["responses"] and "202" in export["responses"]
    kinds = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "export" in kinds["discriminator"]["mapping"]
