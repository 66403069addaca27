"""tuneq.client against the live stack: typed calls, the event stream surviving a dropped connection,
retries that honour Retry-After, and the service's problem+json carried by ApiError."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.support import Stack
from tuneq.client import Client
from tuneq.errors import ApiError


class CutFirstStream(httpx.BaseTransport):
    """The real transport, except that the first event stream drops after its first event, as a flaky proxy
    would; records each request so a test can see what the client sent."""

    def __init__(self) -> None:
        self.inner, self.requests, self.statuses = httpx.HTTPTransport(), [], []  # type: ignore[var-annotated]
        self.cut = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response = self.inner.handle_request(request)
        self.statuses.append(response.status_code)
        if request.headers.get("accept") == "text/event-stream" and not self.cut:
            self.cut = True
            response.stream = _AfterFirstEvent(response.stream)  # type: ignore[arg-type]
        return response


class _AfterFirstEvent(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream) -> None:
        self.inner = inner

    def __iter__(self) -> Iterator[bytes]:
        buffered = b""
        for chunk in self.inner:
            buffered += chunk
            if b"\n\n" in buffered:
                yield buffered[: buffered.index(b"\n\n") + 2]
                raise httpx.ReadError("connection reset by peer")

    def close(self) -> None:
        self.inner.close()


def _key(rate_limit: str | None = None) -> str:
    from app.db import session_scope
    from app.services import auth

    with session_scope() as session:
        team = auth.get_or_create_team(session, f"team-{uuid.uuid4().hex[:10]}")
        return auth.create_key(session, team_id=team.id, rate_limit=rate_limit)[1]


@pytest.fixture
def tq(stack: Stack) -> Iterator[Client]:
    with Client(stack.base_url, _key()) as client:
        yield client


def test_submit_wait_and_list(tq: Client) -> None:
    job = tq.submit_job({"kind": "test", "labels": {"run": "a"}, "spec": {"steps": 2, "step_seconds": 0.02}})

    final = tq.wait(job["id"])

    assert final["status"] == "succeeded" and (final["progress"] or {})["done"] == 2
    assert [j["id"] for j in tq.list_jobs(label="run:a")["data"]] == [job["id"]]


def test_events_resume_after_a_dropped_stream_with_nothing_lost_or_repeated(stack: Stack) -> None:
    transport = CutFirstStream()
    with Client(stack.base_url, _key(), transport=transport, backoff=0.05) as tq:
        job = tq.submit_job({"kind": "test", "spec": {"steps": 3, "step_seconds": 0.05}})

        streamed = list(tq.events(job["id"]))
        stored = tq.event_page(job["id"], limit=1000)["data"]

    assert [e["seq"] for e in streamed] == [e["seq"] for e in stored]
    assert streamed[-1]["type"] == "succeeded"
    resumed = [r for r in transport.requests if "last-event-id" in r.headers]
    assert resumed and resumed[0].headers["last-event-id"] == str(streamed[0]["seq"])


def test_a_429_is_retried_after_its_retry_after(stack: Stack) -> None:
    transport = CutFirstStream()
    with Client(stack.base_url, _key(rate_limit="1/second"), transport=transport) as tq:
        first = tq.list_jobs()
        second = tq.list_jobs()  # over the limit: answered 429 first, then served after Retry-After

    assert first["data"] == second["data"] == []
    assert 429 in transport.statuses and transport.statuses[-1] == 200


def test_api_errors_carry_the_problem_fields(tq: Client) -> None:
    with pytest.raises(ApiError) as invalid:
        tq.submit_job({"kind": "test", "spec": {"steps": -1}})
    with pytest.raises(ApiError) as missing:
        tq.get_job("job_does_not_exist")

    assert invalid.value.status == 422 and invalid.value.code
    assert any("steps" in [str(p) for p in e["loc"]] for e in invalid.value.errors)
    assert "steps" in invalid.value.message
    assert missing.value.status == 404 and missing.value.detail
