"""Generation spend: a server default max_cost_usd, and a per-team cap on what unfinished generation jobs may
spend together (team.limits["generation_max_cost_usd"], default TUNEQ_GENERATION_TEAM_MAX_COST_USD)."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import select, update

from app.db import session_scope
from app.models import ApiKey, Team


def _generation(**spec: Any) -> dict[str, Any]:
    return {"kind": "generation", "spec": {"count": 2, "prompt": "Teach {{ index }}.", **spec}}


def _set_team_cap(client: httpx.Client, usd: float) -> None:
    prefix = client.headers["Authorization"].split()[1].split("_", 2)[1]
    with session_scope() as session:
        team_id = session.scalars(select(ApiKey.team_id).where(ApiKey.prefix == prefix)).one()
        session.execute(update(Team).where(Team.id == team_id).values(limits={"generation_max_cost_usd": usd}))


def test_a_generation_without_max_cost_gets_the_default(client: httpx.Client) -> None:
    blocker = client.post("/v1/jobs", json={"kind": "test", "spec": {"steps": 1, "step_seconds": 30}}).json()
    r = client.post("/v1/jobs", json={**_generation(), "depends_on": [blocker["id"]]})
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["max_cost_usd"] == 20.0  # TUNEQ_GENERATION_DEFAULT_MAX_COST_USD
    assert client.get(f"/v1/jobs/{r.json()['id']}").json()["spec"]["max_cost_usd"] == 20.0
    client.post(f"/v1/jobs/{blocker['id']}/cancel")


def test_the_team_cap_counts_unfinished_generation_jobs(client: httpx.Client) -> None:
    _set_team_cap(client, 30)
    blocker = client.post("/v1/jobs", json={"kind": "test", "spec": {"steps": 1, "step_seconds": 30}}).json()
    wait = {"depends_on": [blocker["id"]]}  # keeps the generation jobs unfinished (pending)
    first = client.post("/v1/jobs", json={**_generation(max_cost_usd=20), **wait})
    assert first.status_code == 201, first.text
    r = client.post("/v1/jobs", json={**_generation(max_cost_usd=15), **wait})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail.startswith("spec.max_cost_usd:") and "cap of 30 USD" in detail and "20 USD in use" in detail
    assert r.json()["errors"][0]["loc"] == ["body", "spec", "max_cost_usd"]
    assert client.post("/v1/jobs", json={**_generation(max_cost_usd=10), **wait}).status_code == 201

    # A cancelled job no longer counts.
    client.post(f"/v1/jobs/{first.json()['id']}/cancel")
    assert client.post("/v1/jobs", json={**_generation(max_cost_usd=15), **wait}).status_code == 201
    client.post(f"/v1/jobs/{blocker['id']}/cancel")  # its dependents are cancelled with it
