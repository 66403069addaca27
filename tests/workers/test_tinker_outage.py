"""A Tinker outage raised anywhere (inside a wait or not) ends the job as an outage: `tinker_unavailable`, not
the user's fault, retried and then resumable; never "a bug on our side"."""

from __future__ import annotations

import httpx
import tinker

from workers.clients.tinker import from_tinker, job_error
from workers.errors import JobFailed, RetryJob


def _connection_error() -> Exception:
    request = httpx.Request("POST", "https://tinker.invalid/api/v1/create_model")
    try:
        try:
            raise httpx.ConnectError("All connection attempts failed", request=request)
        except httpx.ConnectError as exc:
            raise tinker.APIConnectionError(request=request) from exc
    except tinker.APIConnectionError as exc:
        return exc


def test_a_connection_error_is_an_outage_with_the_resume_route() -> None:
    ended = job_error(_connection_error(), "create_lora_training_client", "job_abc")
    assert isinstance(ended, RetryJob) and ended.code == "tinker_unavailable"
    assert "could not be reached" in ended.message and "POST /v1/jobs/job_abc/resume" in ended.message


def test_an_sdk_error_wrapped_by_other_code_is_still_recognised() -> None:
    try:
        try:
            raise _connection_error()
        except tinker.APIConnectionError as exc:
            raise RuntimeError("the tokenizer could not be fetched") from exc
    except RuntimeError as wrapped:
        assert from_tinker(wrapped)
        assert isinstance(job_error(wrapped, "a call"), RetryJob)
    assert not from_tinker(ValueError("a bug of ours"))
    assert not from_tinker(TimeoutError("someone else's timeout"))


def test_a_refused_request_is_the_users_and_a_refused_key_the_operators() -> None:
    request = httpx.Request("POST", "https://tinker.invalid/x")
    bad = tinker.BadRequestError("bad", response=httpx.Response(400, request=request), body=None)
    denied = tinker.AuthenticationError("no", response=httpx.Response(401, request=request), body=None)
    user, operator = job_error(bad, "a call"), job_error(denied, "a call")
    assert isinstance(user, JobFailed) and user.code == "tinker_rejected" and user.user_error
    assert isinstance(operator, JobFailed) and operator.code == "tinker_error" and not operator.user_error
