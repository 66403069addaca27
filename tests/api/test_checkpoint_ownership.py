"""A tinker:// path is only usable by the team whose training job recorded it (one Tinker key serves every
team): at submit (a 422 naming the field) and again when the job runs."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import make_client
from tests.support import Stack


def _team_of(client: httpx.Client) -> str:
    from sqlalchemy import select

    from app.db import session_scope
    from app.models import ApiKey

    prefix = client.headers["Authorization"].split()[1].split("_", 2)[1]
    with session_scope() as session:
        return session.scalars(select(ApiKey.team_id).where(ApiKey.prefix == prefix)).one()


def _training_with_checkpoints(team_id: str) -> dict[str, str]:
    """A finished training job of the team with a state checkpoint and its final sampler weights, as a worker
    records them, plus a ChatML dataset artifact the team owns."""
    from app.db import session_scope
    from app.models import Artifact, Job
    from app.services import training as training_service

    run = uuid.uuid4().hex[:8]
    paths = {"state": f"tinker://run-{run}/weights/step-000010",
             "sampler": f"tinker://run-{run}/sampler_weights/final-000020"}
    with session_scope() as session:
        job = Job(team_id=team_id, kind="training", status="succeeded", spec={}, labels={})
        session.add(job)
        session.flush()
        ids = {kind: training_service.add_checkpoint(session, job_id=job.id, step=10, kind=kind, uri=uri,
                                                     next_step=10, data={}) for kind, uri in paths.items()}
        artifact = Artifact(team_id=team_id, kind="dataset", name="train.jsonl", uri="nowhere", format="chatml_jsonl",
                            rows=10)
        session.add(artifact)
        session.flush()
        return {**paths, "state_id": ids["state"], "sampler_id": ids["sampler"], "artifact": artifact.id,
                "job": job.id}


def _training(artifact: str, ref: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "training", "spec": {"base_model": "Qwen/Qwen3-8B", "train_artifact": artifact,
                                         "from_checkpoint": ref}, **extra}


def _evaluation(artifact: str, ref: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "evaluation", "spec": {"base_model": "Qwen/Qwen3-8B", "eval_artifact": artifact,
                                           "checkpoints": [ref]}, **extra}


def test_another_teams_tinker_paths_are_refused(stack: Stack, client: httpx.Client) -> None:
    with make_client(stack.base_url) as owner:
        theirs = _training_with_checkpoints(_team_of(owner))
    mine = _training_with_checkpoints(_team_of(client))

    r = client.post("/v1/jobs", json=_training(mine["artifact"], theirs["state"]))
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail.startswith(f"spec.from_checkpoint: {theirs['state']} is not a checkpoint of your team")
    assert "GET /v1/jobs/{id}/checkpoints" in detail
    assert r.json()["errors"][0]["loc"] == ["body", "spec", "from_checkpoint"]

    r = client.post("/v1/jobs", json=_evaluation(mine["artifact"], theirs["sampler"]))
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith(f"spec.checkpoints[0]: {theirs['sampler']} is not a checkpoint of your team")

    # A path nobody recorded is refused the same way; so is another team's checkpoint id.
    r = client.post("/v1/jobs", json=_training(mine["artifact"], "tinker://made-up/weights/step-1"))
    assert r.status_code == 422 and "is not a checkpoint of your team" in r.json()["detail"]
    r = client.post("/v1/jobs", json=_training(mine["artifact"], theirs["state_id"]))
    assert r.status_code == 422 and f"no checkpoint {theirs['state_id']} in your team" in r.json()["detail"]


def test_own_tinker_paths_are_accepted(client: httpx.Client) -> None:
    mine = _training_with_checkpoints(_team_of(client))
    blocker = client.post("/v1/jobs", json={"kind": "test", "spec": {"steps": 1, "step_seconds": 30}}).json()
    wait = {"depends_on": [blocker["id"]]}  # the new jobs stay pending: this test is about the submit
    created = []
    for body in (_training(mine["artifact"], mine["state"], **wait), _training(mine["artifact"], mine["state_id"], **wait),
                 _evaluation(mine["artifact"], mine["sampler"], **wait)):
        r = client.post("/v1/jobs", json=body)
        assert r.status_code == 201, r.text
        created.append(r.json()["id"])
    for job_id in [*created, blocker["id"]]:
        client.post(f"/v1/jobs/{job_id}/cancel")


@pytest.mark.usefixtures("backend")
def test_a_worker_never_resolves_another_teams_path() -> None:
    from app.db import session_scope
    from app.errors import NotFound
    from app.services import auth
    from app.services import training as training_service

    with session_scope() as session:
        a = auth.get_or_create_team(session, f"team-{uuid.uuid4().hex[:8]}").id
        b = auth.get_or_create_team(session, f"team-{uuid.uuid4().hex[:8]}").id
    theirs = _training_with_checkpoints(a)
    with session_scope() as session:
        assert training_service.resolve_checkpoint(session, team_id=a, ref=theirs["sampler"]) == theirs["sampler"]
        assert training_service.resolve_checkpoint(session, team_id=a, ref=theirs["state_id"]) == theirs["state"]
        for ref in (theirs["sampler"], theirs["state"], theirs["state_id"]):
            with pytest.raises(NotFound):
                training_service.resolve_checkpoint(session, team_id=b, ref=ref)


@pytest.mark.usefixtures("backend")
def test_sampler_weights_resolve_for_their_team_only_in_both_layouts() -> None:
    """A checkpoint row with its sampler weights beside its state (as training records them now), a state-only
    row, and an older run's separate sampler row: each resolves to what can be sampled, for its team only."""
    from app.db import session_scope
    from app.errors import NotFound
    from app.models import Job
    from app.services import auth
    from app.services import training as training_service

    run = uuid.uuid4().hex[:8]
    state, sampler = f"tinker://run-{run}/weights/step-000005", f"tinker://run-{run}/sampler_weights/step-000005"
    with session_scope() as session:
        a = auth.get_or_create_team(session, f"team-{uuid.uuid4().hex[:8]}").id
        b = auth.get_or_create_team(session, f"team-{uuid.uuid4().hex[:8]}").id
        job = Job(team_id=a, kind="training", status="succeeded", spec={}, labels={})
        session.add(job)
        session.flush()
        both = training_service.add_checkpoint(session, job_id=job.id, step=5, kind="state", uri=state,
                                               sampler_uri=sampler, next_step=5, data={}, loss=1.5)
        state_only = training_service.add_checkpoint(session, job_id=job.id, step=3, kind="state",
                                                     uri=f"tinker://run-{run}/weights/step-000003", next_step=3,
                                                     data={})
    legacy = _training_with_checkpoints(a)
    with session_scope() as session:
        for ref in (both, state, sampler):
            assert training_service.sampler_path(session, team_id=a, ref=ref) == sampler
            with pytest.raises(NotFound):
                training_service.sampler_path(session, team_id=b, ref=ref)
        paths = training_service.checkpoint_paths(session, team_id=a, ref=sampler)
        assert (paths.id, paths.state_path, paths.sampler_path) == (both, state, sampler)
        with pytest.raises(NotFound, match="sampler_every"):
            training_service.sampler_path(session, team_id=a, ref=state_only)
        assert training_service.sampler_path(session, team_id=a, ref=legacy["sampler_id"]) == legacy["sampler"]
        assert training_service.checkpoint_paths(session, team_id=a, ref=legacy["sampler"]).state_path == legacy["state"]
        assert training_service.latest_sampler_path(session, job.id, team_id=a) == sampler
        assert training_service.latest_sampler_path(session, job.id, team_id=b) is None
        assert [(c.step, c.sampler_path, c.eval_loss) for c in training_service.sampler_checkpoints(session, job.id)
                ] == [(5, sampler, None)]
