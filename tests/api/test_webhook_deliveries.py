"""The webhook outbox as a user sees it: a job (or pipeline) with a webhook_url that ends owes one delivery, written
with the transition itself (also when the transition runs as one autocommitted statement), never two for one
transition; `GET /v1/jobs/{id}/webhook-deliveries` lists them for the job's team only."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.db import run_statement, session_scope
from app.models import Job, Pipeline, WebhookDelivery, new_id, utcnow
from app.services import transitions
from app.services.transitions import LeaseLost
from app.settings import get_settings
from tests.api.local_api import LocalApi, local_api, new_key

HOOK = "https://hooks.example.com/tuneq"


@pytest.fixture(scope="module")
def api(backend: dict[str, str]) -> Iterator[LocalApi]:
    with local_api() as running:
        yield running


def client(api: LocalApi, key: str) -> httpx.Client:
    return httpx.Client(base_url=api.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def running_job(team_id: str, *, webhook_url: str | None = HOOK, pipeline_id: str | None = None,
                step: str | None = None) -> str:
    """A job a worker holds (lease token 1), with a heartbeat far ahead so no reaper takes it over."""
    job_id = new_id("job")
    now = utcnow()
    with session_scope() as session:
        session.add(Job(id=job_id, team_id=team_id, kind="test", status="running", spec={}, lease_token=1,
                        event_seq=2, heartbeat_at=now + timedelta(days=1), webhook_url=webhook_url,
                        pipeline_id=pipeline_id, pipeline_step=step, started_at=now))
    return job_id


def outbox(**where: Any) -> list[Any]:
    with session_scope() as session:
        query = select(WebhookDelivery).filter_by(**where).order_by(WebhookDelivery.id)
        return list(session.execute(query).scalars().all())


def finish(job_id: str, status: str, **kw: Any) -> None:
    with session_scope() as session:
        transitions.finish(session, job_id, 1, status, **kw)


def test_an_ending_job_owes_one_delivery_and_a_replay_adds_none(backend: dict[str, str]) -> None:
    team_id, _, _ = new_key()
    job_id = running_job(team_id)
    finish(job_id, "succeeded", result={"steps": 1})
    [delivery] = outbox(job_id=job_id)
    assert (delivery.event_type, delivery.status, delivery.attempts) == ("job.succeeded", "pending", 0)
    assert delivery.team_id == team_id and delivery.next_attempt_at is not None
    assert delivery.payload["id"] == job_id and delivery.payload["result"] == {"steps": 1}
    assert delivery.payload["kind"] == "test"
    with pytest.raises(LeaseLost):  # the same transition again: refused, and no second delivery
        finish(job_id, "succeeded", result={"steps": 1})
    assert len(outbox(job_id=job_id)) == 1


def test_a_job_without_webhook_url_owes_nothing(backend: dict[str, str]) -> None:
    team_id, _, _ = new_key()
    job_id = running_job(team_id, webhook_url=None)
    finish(job_id, "failed", error=transitions.error_body("x", "it failed", user_error=True))
    assert outbox(job_id=job_id) == []


def test_a_transition_run_as_one_statement_writes_its_delivery(backend: dict[str, str]) -> None:
    """A stalled job out of preemptions fails through app.db.run_statement (autocommit on PostgreSQL)."""
    team_id, _, _ = new_key()
    job_id = running_job(team_id)
    requeued = run_statement(lambda db: transitions.hand_back(db, job_id, 1, reason="stalled", max_preemptions=0))
    assert requeued is False
    [delivery] = outbox(job_id=job_id)
    assert delivery.event_type == "job.failed"
    assert delivery.payload["error"]["code"] == "too_many_preemptions"


def test_a_pipeline_owes_one_delivery_when_its_last_step_ends(backend: dict[str, str]) -> None:
    team_id, _, _ = new_key()
    pipeline_id = new_id("pl")
    with session_scope() as session:
        session.add(Pipeline(id=pipeline_id, team_id=team_id, steps={}, webhook_url=HOOK))
    first = running_job(team_id, webhook_url=None, pipeline_id=pipeline_id, step="data")
    second = running_job(team_id, webhook_url=None, pipeline_id=pipeline_id, step="train")
    finish(first, "succeeded")
    assert outbox(pipeline_id=pipeline_id) == []  # a step still runs
    finish(second, "failed", error=transitions.error_body("x", "it failed", user_error=True))
    [delivery] = outbox(pipeline_id=pipeline_id)
    assert delivery.event_type == "pipeline.failed" and delivery.job_id is None
    assert delivery.payload["steps"] == {"data": {"job_id": first, "status": "succeeded"},
                                         "train": {"job_id": second, "status": "failed"}}


def test_deliveries_are_listed_for_the_jobs_team_only(api: LocalApi) -> None:
    team_id, _, key = new_key()
    _, _, other_key = new_key()
    job_id = running_job(team_id)
    quiet = running_job(team_id, webhook_url=None)
    finish(job_id, "cancelled")
    with client(api, key) as mine, client(api, other_key) as theirs:
        page = mine.get(f"/v1/jobs/{job_id}/webhook-deliveries")
        assert page.status_code == 200, page.text
        [delivery] = page.json()["data"]
        assert delivery["job_id"] == job_id and delivery["event_type"] == "job.cancelled"
        assert delivery["status"] in ("pending", "delivered", "failed") and delivery["created_at"]
        assert {"attempts", "last_status_code", "last_error", "next_attempt_at", "delivered_at"} <= set(delivery)
        assert "payload" not in delivery and HOOK not in page.text
        assert mine.get(f"/v1/jobs/{quiet}/webhook-deliveries").json()["data"] == []
        assert theirs.get(f"/v1/jobs/{job_id}/webhook-deliveries").status_code == 404
        assert mine.get("/v1/jobs/job_nope/webhook-deliveries").status_code == 404
        bad = mine.get(f"/v1/jobs/{job_id}/webhook-deliveries", params={"cursor": "nope"})
        assert bad.status_code == 422 and "cursor" in bad.text


def test_pipeline_deliveries_are_listed_for_its_team_only(api: LocalApi) -> None:
    team_id, _, key = new_key()
    _, _, other_key = new_key()
    pipeline_id = new_id("pl")
    with session_scope() as session:
        session.add(Pipeline(id=pipeline_id, team_id=team_id, steps={}, webhook_url=HOOK))
    finish(running_job(team_id, webhook_url=None, pipeline_id=pipeline_id, step="only"), "succeeded")
    with client(api, key) as mine, client(api, other_key) as theirs:
        [delivery] = mine.get(f"/v1/pipelines/{pipeline_id}/webhook-deliveries").json()["data"]
        assert delivery["pipeline_id"] == pipeline_id and delivery["event_type"] == "pipeline.succeeded"
        assert theirs.get(f"/v1/pipelines/{pipeline_id}/webhook-deliveries").status_code == 404


def test_a_delivery_is_claimed_by_one_sender_and_retried_later(backend: dict[str, str]) -> None:
    """Two sweeps never take the same delivery; a failed attempt is due again only after its backoff."""
    from workers import webhooks as sender

    settings = get_settings().model_copy(update={"webhook_retry_base_seconds": 3600.0})
    team_id, _, _ = new_key()
    job_id = running_job(team_id)
    finish(job_id, "succeeded")
    [delivery] = outbox(job_id=job_id)
    first = [d for d in sender.claim_due(settings, limit=10_000) if d.id == delivery.id]
    second = [d for d in sender.claim_due(settings, limit=10_000) if d.id == delivery.id]
    assert len(first) == 1 and second == []
    assert first[0].url == HOOK and first[0].attempts == 1
    assert sender.record(first[0], settings, 503, "the receiver answered HTTP 503") == "pending"
    [retrying] = outbox(job_id=job_id)
    assert (retrying.attempts, retrying.last_status_code, retrying.status) == (1, 503, "pending")
    assert retrying.next_attempt_at > utcnow() + timedelta(minutes=30)
    assert not [d for d in sender.claim_due(settings, limit=10_000) if d.id == delivery.id]
