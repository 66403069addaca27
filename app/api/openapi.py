"""A truthful OpenAPI document: FastAPI's, corrected to say what the API really does.

FastAPI cannot see two things: authentication (a bearer key read by a dependency, app/api/deps.py) and our
error bodies (RFC 9457 problem+json from app/api/responses.py, not its HTTPValidationError). This module
post-processes the generated document once: every /v1 operation requires `bearerAuth`, and every error it
can answer is declared as `application/problem+json` with the `Problem` schema.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_REF = "#/components/schemas/Problem"

# The body of every error response, as app.api.responses.problem builds it.
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "An error, as RFC 9457 problem details. `detail` names the field and what to fix; `code` is "
                   "stable and meant for programs; `errors` lists each invalid field.",
    "type": "object",
    "required": ["type", "title", "status", "detail", "code", "errors"],
    "properties": {
        "type": {"type": "string", "description": "https://tuneq.dev/problems/<code>"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "code": {"type": "string", "description": "e.g. invalid_request, not_found, database_unavailable"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["loc", "msg"],
                "properties": {
                    "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                    "msg": {"type": "string"},
                },
            },
        },
    },
}

BEARER_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "An API key of your team: `Authorization: Bearer <key>` (created with `tuneq create-key`).",
}

# What each error status means on this API.
DESCRIPTIONS = {
    400: "Malformed request (e.g. the body is not valid JSON)",
    401: "Missing, unknown or revoked API key",
    403: "The API key lacks the scope this operation needs",
    404: "No such object in your team",
    408: "The request body did not arrive in time",
    409: "Conflict with the object's current state (or an Idempotency-Key in use)",
    413: "The request body is too large",
    422: "Invalid request: `errors` names each invalid field",
    429: "Too many requests; retry after the Retry-After header's seconds",
    503: "A dependency (database, broker) is unavailable; retry after the Retry-After header's seconds",
}
EVERY_V1 = (401, 403, 422, 429, 503)
WITH_BODY = (400, 408, 413)
CONFLICTS = {("post", "/v1/jobs"), ("post", "/v1/jobs/{job_id}/cancel"), ("post", "/v1/jobs/{job_id}/resume")}


def error_statuses(method: str, path: str, operation: dict[str, Any]) -> list[int]:
    """The error statuses `method path` can answer (docs/architecture.md, "Parts": the API)."""
    statuses = set(EVERY_V1)
    if operation.get("requestBody"):
        statuses.update(WITH_BODY)
    if "{" in path:
        statuses.add(404)
    if (method, path) in CONFLICTS:
        statuses.add(409)
    return sorted(statuses)


# Headers sent with some errors (app.main renders them from the domain error).
HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer", "minimum": 0}}},
    503: {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer", "minimum": 0}}},
}


def _problem_response(description: str, status: int) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description,
                                "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": PROBLEM_REF}}}}
    if status in HEADERS:
        response["headers"] = HEADERS[status]
    return response


def make_truthful(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the security scheme and the Problem responses to FastAPI's document, in place."""
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})["bearerAuth"] = BEARER_SCHEME
    schemas = components.setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    for path, operations in schema.get("paths", {}).items():
        if not path.startswith("/v1/"):
            continue  # /healthz, /readyz (and /metrics, not in the document) need no key
        for method, operation in operations.items():
            operation["security"] = [{"bearerAuth": []}]
            responses = operation.setdefault("responses", {})
            for status in error_statuses(method, path, operation):
                declared = responses.get(str(status), {})
                responses[str(status)] = _problem_response(declared.get("description") or DESCRIPTIONS[status],
                                                           status)
    for path, operations in schema.get("paths", {}).items():
        if path == "/readyz":
            for operation in operations.values():
                operation.setdefault("responses", {})["503"] = _problem_response("Not ready: a dependency is down",
                                                                                 503)
    # FastAPI's validation-error schemas are no longer referenced by anything.
    text = repr(schema.get("paths", {}))
    for name in ("HTTPValidationError", "ValidationError"):
        if f"#/components/schemas/{name}'" not in text:
            schemas.pop(name, None)
    return schema


def install(app: FastAPI) -> None:
    """Make `app.openapi()` (and /openapi.json) return the corrected document, built once."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = make_truthful(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
