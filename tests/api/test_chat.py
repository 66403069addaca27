"""POST /v1/checkpoints/{ref}/chat: a reply from a trained checkpoint or a base model, through the real API process
and the fake Tinker it shares with the worker (checkpoints the worker saved are loadable by the API)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from app.services.chat import split_thinking
from tests.conftest import make_client
from tests.integration.test_training_jobs import make_dataset, submit, wait
from tests.support import Stack, start_api_only

BASE = "Qwen/Qwen3-8B"
QUESTION = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2 plus 2?"}]


def _team_of(client: httpx.Client) -> str:
    from sqlalchemy import select

    from app.db import session_scope
    from app.models import ApiKey

    prefix = client.headers["Authorization"].split()[1].split("_", 2)[1]
    with session_scope() as session:
        return session.scalars(select(ApiKey.team_id).where(ApiKey.prefix == prefix)).one()


def _chat(client: httpx.Client, ref: str, **body: Any) -> httpx.Response:
    return client.post(f"/v1/checkpoints/{ref}/chat", json={"messages": QUESTION, "max_tokens": 12, **body})


@pytest.fixture(scope="module")
def trained(stack: Stack) -> Iterator[tuple[httpx.Client, dict[str, Any]]]:
    """A client of a team with a finished short training run, and the run's checkpoint with sampler weights."""
    with make_client(stack.base_url) as client:
        job = wait(client, submit(client, make_dataset(client, rows=12, validation_rows=0), rank=8, epochs=1)["id"])
        assert job["status"] == "succeeded", job["error"]
        checkpoints = client.get(f"/v1/jobs/{job['id']}/checkpoints").json()["data"]
        sampleable = [c for c in checkpoints if c["kind"] == "sampler" or c.get("sampler_uri")]
        assert sampleable, checkpoints
        yield client, sampleable[-1]


def test_a_trained_checkpoint_answers_by_id_and_by_its_tinker_path(trained: tuple[httpx.Client, dict]) -> None:
    client, checkpoint = trained
    r = _chat(client, checkpoint["id"], temperature=0, seed=7)
    assert r.status_code == 200, r.text
    reply = r.json()
    assert reply["model"] == checkpoint["id"]
    assert reply["message"]["role"] == "assistant" and isinstance(reply["message"]["content"], str)
    assert reply["finish_reason"] in ("stop", "length")
    assert reply["usage"]["prompt_tokens"] > 10 and 1 <= reply["usage"]["completion_tokens"] <= 12

    path = checkpoint["sampler_uri"] if checkpoint["kind"] == "state" else checkpoint["uri"]
    by_path = _chat(client, quote(path, safe=""), temperature=0, seed=7)
    assert by_path.status_code == 200, by_path.text
    assert by_path.json()["message"] == reply["message"]  # the same weights, greedy: the same reply


def test_the_base_model_answers_by_name(client: httpx.Client) -> None:
    r = _chat(client, BASE, enable_thinking=False)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == BASE and r.json()["message"]["role"] == "assistant"
    thinking_prompt = _chat(client, BASE).json()["usage"]["prompt_tokens"]
    assert r.json()["usage"]["prompt_tokens"] > thinking_prompt  # non-thinking mode's prompt ends with <think></think>

    unknown = _chat(client, "Qwen/Qwen9-1T")
    assert unknown.status_code == 404 and BASE in unknown.json()["detail"]


def test_another_teams_checkpoint_is_not_found(stack: Stack, trained: tuple[httpx.Client, dict]) -> None:
    _, checkpoint = trained
    with make_client(stack.base_url) as stranger:
        for ref in (checkpoint["id"], quote(checkpoint["uri"], safe="")):
            r = _chat(stranger, ref)
            assert r.status_code == 404, r.text
            assert r.headers["content-type"].startswith("application/problem+json")


def test_a_checkpoint_without_sampler_weights_is_refused(client: httpx.Client) -> None:
    from app.db import session_scope
    from app.models import Job
    from app.services import training as training_service

    with session_scope() as session:
        job = Job(team_id=_team_of(client), kind="training", status="succeeded", spec={}, labels={})
        session.add(job)
        session.flush()
        state_only = training_service.add_checkpoint(
            session, job_id=job.id, step=5, kind="state", uri=f"tinker://run-{uuid.uuid4().hex[:8]}/weights/step-5",
            next_step=5, data={})
    r = _chat(client, state_only)
    assert r.status_code == 422, r.text
    assert "no sampler weights" in r.json()["detail"] and "step 5" in r.json()["detail"]


@pytest.mark.parametrize(("messages", "field"), [
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], "messages[1].role"),
    ([{"role": "user", "content": "   "}], "messages[0].content"),
    ([{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "Hi"}], "messages[0].role"),
    ([{"role": "user", "content": 3}], "messages[0].content"),
])
def test_bad_messages_say_which_field_to_fix(client: httpx.Client, messages: list[dict], field: str) -> None:
    r = client.post(f"/v1/checkpoints/{BASE}/chat", json={"messages": messages})
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith(field)


def test_chat_has_its_own_rate_limit_per_key(client: httpx.Client) -> None:
    # 20/minute by default; bad messages are refused after the limit is counted, so this costs no sampling.
    # Two windows let through at most 2 × 22 (a process spends a tenth of a limit at a time): the 45th is refused.
    answers = [client.post(f"/v1/checkpoints/{BASE}/chat", json={"messages": [{"role": "assistant", "content": "x"}]})
               for _ in range(45)]
    assert answers[0].status_code == 422
    refused = [a for a in answers if a.status_code == 429]
    assert refused and "TUNEQ_CHAT_RATE_LIMIT" in refused[0].json()["detail"]
    assert int(refused[0].headers["retry-after"]) >= 1


def test_without_tinker_chat_is_unavailable_and_says_which_setting(backend: dict[str, str], tmp_path: Path) -> None:
    api = start_api_only(backend, tmp_path)  # no TUNEQ_TINKER_FAKE, no TINKER_API_KEY
    try:
        with make_client(api.base_url) as client:
            r = _chat(client, BASE)
        assert r.status_code == 503, r.text
        assert "TINKER_API_KEY" in r.json()["detail"]
    finally:
        api.stop()


def test_a_reply_slower_than_the_timeout_is_a_504(backend: dict[str, str], tmp_path: Path) -> None:
    fake = {"state_dir": str(tmp_path / "tinker"), "latency": {"sample": 30}}
    api = start_api_only(backend, tmp_path, TUNEQ_TINKER_FAKE="tests.fakes.tinker_fake:make_fake_service_client",
                         TUNEQ_TINKER_FAKE_CONFIG=json.dumps(fake), TUNEQ_CHAT_TIMEOUT_SECONDS="1")
    try:
        with make_client(api.base_url) as client:
            r = _chat(client, BASE)
        assert r.status_code == 504, r.text
        assert "TUNEQ_CHAT_TIMEOUT_SECONDS" in r.json()["detail"]
    finally:
        api.stop()


def test_thinking_is_separated_from_the_answer_as_the_renderer_does() -> None:
    assert split_thinking("<think>\nAdd them.\n</think>\n\n4") == ("Add them.", "4")
    assert split_thinking("<think>\n\n</think>\n\n4") == (None, "4")  # the empty block of non-thinking mode
    assert split_thinking("4") == (None, "4")
    assert split_thinking("<think>\nStill thinking") == ("Still thinking", "")  # cut off by max_tokens
