"""Keys, team scoping, idempotency and bad input: clear 4xx problem details, never a 500."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.conftest import make_client
from tests.support import Stack, free_port


def test_another_teams_job_is_not_found(stack: Stack, client: httpx.Client) -> None:
    job = client.post("/v1/jobs", json={"kind": "test"}).json()
    with make_client(stack.base_url) as other:
        for method, path in [("GET", ""), ("GET", "/events"), ("POST", "/cancel"), ("GET", "/wait?timeout=0")]:
            r = other.request(method, f"/v1/jobs/{job['id']}{path}")
            assert r.status_code == 404, (path, r.text)
            assert r.headers["content-type"] == "application/problem+json"
        assert job["id"] not in [j["id"] for j in other.get("/v1/jobs").json()["data"]]


def test_every_route_but_health_needs_a_key(stack: Stack) -> None:
    spec = httpx.get(f"{stack.base_url}/openapi.json").json()
    checked = 0
    for path, methods in spec["paths"].items():
        for method in methods:
            url = stack.base_url + path.replace("{job_id}", "job_x")
            r = httpx.request(method, url)
            if path in ("/healthz", "/readyz"):
                assert r.status_code == 200, r.text
            else:
                assert r.status_code == 401, (method, path, r.text)
                assert "Authorization: Bearer" in r.json()["detail"]
                checked += 1
    assert checked >= 6
    r = httpx.get(f"{stack.base_url}/v1/jobs", headers={"Authorization": "Bearer tq_nope_nope"})
    assert r.status_code == 401 and "unknown or revoked" in r.json()["detail"]


def test_revoked_key_stops_working_within_seconds(stack: Stack) -> None:
    from sqlalchemy import select

    from app.db import session_scope
    from app.models import ApiKey
    from app.services import auth

    with make_client(stack.base_url) as c:
        assert c.get("/v1/jobs").status_code == 200
        token = c.headers["Authorization"].split()[1]
        with session_scope() as session:
            key_id = session.scalars(select(ApiKey.id).where(ApiKey.prefix == token.split("_", 2)[1])).one()
            auth.revoke_key(session, key_id=key_id)
        time.sleep(1.5)  # TUNEQ_KEY_CACHE_SECONDS is 1 in tests
        assert c.get("/v1/jobs").status_code == 401


def test_idempotency_key_creates_exactly_one_job_under_concurrency(client: httpx.Client) -> None:
    body = {"kind": "test", "labels": {"run": "idem"}}

    def post(_: int) -> httpx.Response:
        return client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-123"})

    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(post, range(20)))
    assert {r.status_code for r in responses} <= {201, 409}
    ids = {r.json()["id"] for r in responses if r.status_code == 201}
    assert len(ids) == 1
    assert sum(r.headers.get("Idempotent-Replayed") != "true" for r in responses if r.status_code == 201) == 1
    assert len(client.get("/v1/jobs", params={"label": "run:idem"}).json()["data"]) == 1

    again = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-123"})
    assert again.status_code == 201 and again.json()["id"] in ids
    other = client.post("/v1/jobs", json={"kind": "test", "labels": {"run": "other"}},
                        headers={"Idempotency-Key": "k-123"})
    assert other.status_code == 422
    assert "different request body" in other.json()["detail"]


def _problem(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == status and body["title"] and body["detail"]
    assert "Traceback" not in r.text
    return body


def test_malformed_json(client: httpx.Client) -> None:
    body = _problem(client.post("/v1/jobs", content=b'{"kind": "test",', headers={"content-type": "application/json"}), 400)
    assert "not valid JSON" in body["detail"]


def test_unknown_kind_names_the_field(client: httpx.Client) -> None:
    body = _problem(client.post("/v1/jobs", json={"kind": "painting"}), 422)
    assert body["detail"].startswith("body.kind:")
    assert "'test'" in body["detail"]
    body = _problem(client.post("/v1/jobs", json={"spec": {}}), 422)
    assert "kind" in body["detail"]


def test_extra_and_wrong_fields_are_named(client: httpx.Client) -> None:
    body = _problem(client.post("/v1/jobs", json={"kind": "test", "spec": {"steps": 1, "colour": "red"}}), 422)
    assert body["errors"][0]["loc"] == ["body", "test", "spec", "colour"] or "colour" in body["detail"]
    body = _problem(client.post("/v1/jobs", json={"kind": "test", "spec": {"steps": -1}}), 422)
    assert "steps" in body["detail"]
    body = _problem(client.post("/v1/jobs", json=["not", "an", "object"]), 422)


def test_oversized_body(client: httpx.Client) -> None:
    big = {"kind": "test", "labels": {"x": "y" * 100}, "depends_on": ["a" * 300_000]}
    body = _problem(client.post("/v1/jobs", json=big), 413)
    assert "TUNEQ_MAX_BODY_BYTES" in body["detail"]

    def chunks():
        yield b'{"kind": "test", "labels": {"x": "'
        for _ in range(50):
            yield b"y" * 10_000
        yield b'"}}'

    _problem(client.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"}), 413)


def test_unknown_route_and_job(client: httpx.Client) -> None:
    _problem(client.get("/v1/nothing-here"), 404)
    body = _problem(client.get("/v1/jobs/job_missing"), 404)
    assert "job_missing" in body["detail"]


def test_health(stack: Stack) -> None:
    assert httpx.get(f"{stack.base_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{stack.base_url}/readyz").json() == {"status": "ok", "sql": "ok", "broker": "ok"}


def test_an_unreachable_database_is_a_503_that_says_so(stack: Stack, tmp_path: Path) -> None:
    """Not a 500: the client learns the request can be retried."""
    down = Stack(env={**stack.env, "TUNEQ_DATABASE_URL": f"sqlite:///{tmp_path}/missing-dir/tuneq.db"},
                 base_url=f"http://127.0.0.1:{free_port()}", logs=tmp_path)
    down.start_api()
    try:
        r = httpx.post(f"{down.base_url}/v1/jobs", json={"kind": "test"}, headers={"Authorization": "Bearer tq_a_b"})
        assert r.status_code == 503, r.text
        assert r.headers["content-type"] == "application/problem+json" and r.headers["retry-after"] == "2"
        assert "database did not answer" in r.json()["detail"]
        assert httpx.get(f"{down.base_url}/readyz").status_code == 503
    finally:
        down.stop()
