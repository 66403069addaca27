"""Scopes: every /v1 route needs one (derived centrally by the gate), a read-only key can read but not write,
and the key is checked before a request body is parsed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from app.api.gate import scope_for
from app.services.auth import SCOPES
from tests.support import Stack


def _key(*scopes: str, team: str | None = None, rate_limit: str | None = None) -> str:
    from app.db import session_scope
    from app.services import auth

    with session_scope() as session:
        t = auth.get_or_create_team(session, team or f"team-{uuid.uuid4().hex[:10]}")
        return auth.create_key(session, team_id=t.id, scopes=scopes, rate_limit=rate_limit)[1]


def _routes(routes: list[Any]) -> Iterator[Any]:
    for route in routes:
        if hasattr(route, "original_router"):  # an included router
            yield from _routes(route.original_router.routes)
        else:
            yield route


def test_every_v1_route_needs_a_scope() -> None:
    from app.main import create_app

    app = create_app()
    seen = 0
    for route in _routes(app.routes):
        path = getattr(route, "path", "")
        if not path.startswith("/v1"):
            continue
        example = path.replace("{job_id}", "job_x").replace("{artifact_id}", "art_x").replace("{fmt}", "csv")
        for method in route.methods:
            needed = scope_for(method, example)
            assert needed in SCOPES, (method, path)
            if method == "GET":
                assert needed == "jobs:read", path
            seen += 1
    assert seen >= 15
    assert scope_for("POST", "/v1/jobs") == "jobs:write"
    assert scope_for("POST", "/v1/jobs/job_x/cancel") == "jobs:write"
    assert scope_for("POST", "/v1/artifacts/art_x/render") == "jobs:read"  # a read, though a POST
    assert scope_for("GET", "/v1/keys") == scope_for("POST", "/v1/admin/keys") == "admin"


def test_read_only_key_can_read_but_not_write(stack: Stack) -> None:
    with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {_key('jobs:read')}"}) as c:
        assert c.get("/v1/jobs").status_code == 200
        r = c.post("/v1/jobs", json={"kind": "test"})
        assert r.status_code == 403, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert "'jobs:write' scope" in r.json()["detail"]
        assert c.post("/v1/jobs/job_x/cancel").status_code == 403
        assert c.post("/v1/files?name=a.jsonl", content=b"{}\n").status_code == 403
        # Rendering reads: a read-only key reaches the route (which answers 404 for an unknown artifact).
        assert c.post("/v1/artifacts/art_x/render?row=0").status_code == 404


def test_write_only_key_cannot_read_and_admin_routes_need_admin(stack: Stack) -> None:
    with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {_key('jobs:write')}"}) as c:
        r = c.get("/v1/jobs")
        assert r.status_code == 403 and "'jobs:read' scope" in r.json()["detail"]
        assert c.post("/v1/jobs", json={"kind": "test"}).status_code == 201
        r = c.get("/v1/admin/keys")
        assert r.status_code == 403 and "'admin' scope" in r.json()["detail"]
    with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {_key('admin')}"}) as c:
        assert c.get("/v1/admin/keys").status_code == 404  # allowed through; no such route yet


def test_the_key_is_checked_before_the_body_is_parsed(stack: Stack) -> None:
    broken = b'{"kind": "test", ' + b'"x": "' + b"y" * 100_000  # malformed JSON: parsing it would say 400
    headers = {"Content-Type": "application/json"}
    r = httpx.post(f"{stack.base_url}/v1/jobs", content=broken, headers=headers)
    assert r.status_code == 401, r.text
    r = httpx.post(f"{stack.base_url}/v1/jobs", content=broken,
                   headers={**headers, "Authorization": f"Bearer tq_{uuid.uuid4().hex[:12]}_nope"})
    assert r.status_code == 401, r.text
    r = httpx.post(f"{stack.base_url}/v1/jobs", content=broken,
                   headers={**headers, "Authorization": f"Bearer {_key('jobs:read')}"})
    assert r.status_code == 403, r.text
    r = httpx.post(f"{stack.base_url}/v1/jobs", content=broken,
                   headers={**headers, "Authorization": f"Bearer {_key('jobs:read', 'jobs:write')}"})
    assert r.status_code == 400 and r.json()["code"] == "malformed_json"


@pytest.mark.usefixtures("backend")
def test_keys_create_takes_scopes() -> None:
    from app.cli import cli

    runner = CliRunner()
    team = f"team-{uuid.uuid4().hex[:8]}"
    out = runner.invoke(cli, ["keys", "create", "--team", team, "--scope", "jobs:read"])
    assert out.exit_code == 0, out.output
    assert "scopes: jobs:read)" in out.output
    out = runner.invoke(cli, ["keys", "create", "--team", team])
    assert out.exit_code == 0 and "scopes: jobs:read, jobs:write)" in out.output
    out = runner.invoke(cli, ["keys", "create", "--team", team, "--scope", "jobs:delete"])
    assert out.exit_code != 0 and "jobs:delete" in out.output
    out = runner.invoke(cli, ["keys", "create", "--team", team, "--rate-limit", "lots"])
    assert out.exit_code != 0 and "--rate-limit" in out.output
