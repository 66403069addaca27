"""The OpenRouter client: replies, retries, failures and what they mean, against the loopback fake server."""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import orjson
import pytest

from tests.fakes.openrouter_server import FakeOpenRouter
from tests.support import free_port
from workers.clients.openrouter import ChatResult, OpenRouterClient, OpenRouterError
from workers.clients.openrouter_errors import retry_after as _retry_after

API_KEY = "sk-or-v1-SECRET-0123456789abcdef"
MODEL = "openai/gpt-4o-mini"
MSGS = [{"role": "system", "content": "You write dialogues."},
        {"role": "user", "content": "Write a dialogue about tide pools."}]


def make(fake: FakeOpenRouter, **kw: Any) -> OpenRouterClient:
    opts: dict[str, Any] = {"api_key": API_KEY, "base_url": fake.url, "backoff_base": 0.01, "backoff_max": 0.05,
                            "timeout": httpx.Timeout(5.0)}
    opts.update(kw)
    return OpenRouterClient(**opts)


def chat_error(client: OpenRouterClient, **chat: Any) -> OpenRouterError:
    """Run one chat call that must fail and return its error."""

    async def go() -> OpenRouterError:
        async with client as orc:
            with pytest.raises(OpenRouterError) as ei:
                await orc.chat(MSGS, **chat)
            return ei.value

    return asyncio.run(go())


def item(key: str) -> dict[str, str]:
    return {"X-Tuneq-Item": key}


def assert_no_key(*things: object) -> None:
    for thing in things:
        assert API_KEY not in str(thing), thing
        assert API_KEY not in repr(thing), thing


# ---------------------------------------------------------------------- success


def test_success_usage_cost_and_headers(seeded_openrouter: FakeOpenRouter) -> None:
    seeded_openrouter.configure(cost_per_call=0.00125)

    async def go() -> ChatResult:
        async with make(seeded_openrouter, referer="https://tuneq.example", app_name="tuneq-test") as orc:
            return await orc.chat(MSGS, model=MODEL, temperature=0.7, seed=3, max_tokens=256,
                                  response_format={"type": "json_object"}, extra_headers=item("ok-1"))

    res = asyncio.run(go())
    assert res.calls == 1 and res.model == MODEL and res.finish_reason == "stop"
    assert res.prompt_tokens > 0 and res.completion_tokens > 0
    assert res.cost_usd == pytest.approx(0.00125)
    dialogue = orjson.loads(res.content)
    assert [m["role"] for m in dialogue["messages"]] == ["user", "assistant"]
    assert "tide pools" in dialogue["messages"][0]["content"]

    assert seeded_openrouter.calls["ok-1"] == 1 and seeded_openrouter.total_calls == 1
    (req,) = list(seeded_openrouter.requests)
    h = req["headers"]
    assert h["authorization"] == f"Bearer {API_KEY}"
    assert h["x-title"] == "tuneq-test" and h["http-referer"] == "https://tuneq.example"
    assert h["content-type"] == "application/json"
    body = req["json"]
    assert body["model"] == MODEL and body["messages"] == MSGS
    assert body["usage"] == {"include": True}
    assert body["temperature"] == 0.7 and body["seed"] == 3 and body["max_tokens"] == 256
    assert body["response_format"] == {"type": "json_object"}
    assert "top_p" not in body


def test_item_key_falls_back_to_message_hash_and_reported_model(seeded_openrouter: FakeOpenRouter) -> None:
    seeded_openrouter.configure(response_model="openai/gpt-4o-mini-2024-07-18",
                              content=lambda msgs, key, attempt: f"hello {attempt}")

    async def go() -> list[ChatResult]:
        async with make(seeded_openrouter) as orc:
            return [await orc.chat(MSGS, model=MODEL) for _ in range(2)]

    first, second = asyncio.run(go())
    assert (first.content, second.content) == ("hello 0", "hello 1")  # same messages -> same item
    assert first.model == "openai/gpt-4o-mini-2024-07-18"
    assert len(seeded_openrouter.calls) == 1 and sum(seeded_openrouter.calls.values()) == 2
    assert "referer" not in "".join(seeded_openrouter.requests[0]["headers"])  # no referer given -> none sent


# ---------------------------------------------------------------------- retries


def test_429_retry_after_is_honoured(seeded_openrouter: FakeOpenRouter) -> None:
    seeded_openrouter.configure(fail_first_n=1, fail_first_kind="429", retry_after=0.6)

    async def go() -> tuple[ChatResult, float]:
        async with make(seeded_openrouter) as orc:  # backoff alone would wait <= 0.01 s
            t0 = time.monotonic()
            res = await orc.chat(MSGS, model=MODEL, extra_headers=item("ra"))
            return res, time.monotonic() - t0

    res, elapsed = asyncio.run(go())
    assert res.calls == 2 and seeded_openrouter.calls["ra"] == 2
    assert 0.6 <= elapsed < 2.0


@pytest.mark.parametrize("kind", ["500", "503", "error_body", "malformed", "stall", "429", "408"])
def test_transient_failures_are_retried(seeded_openrouter: FakeOpenRouter, kind: str) -> None:
    seeded_openrouter.configure(fail_first_n=2, fail_first_kind=kind, stall_seconds=10, retry_after=0.01)

    async def go() -> ChatResult:
        async with make(seeded_openrouter, timeout=httpx.Timeout(0.3)) as orc:
            return await orc.chat(MSGS, model=MODEL, extra_headers=item(f"t-{kind}"))

    t0 = time.monotonic()
    res = asyncio.run(go())
    assert res.calls == 3 == seeded_openrouter.calls[f"t-{kind}"]
    assert seeded_openrouter.outcomes[kind] == 2 and seeded_openrouter.outcomes["ok"] == 1
    assert time.monotonic() - t0 < 3


def test_calls_per_item_match_server_counters_and_are_reproducible(seeded_openrouter: FakeOpenRouter) -> None:
    rates = {"429": 0.1, "500": 0.1, "error_body": 0.1, "malformed": 0.1}
    seeded_openrouter.configure(fail_rates=rates, retry_after=0.0)

    async def go() -> dict[str, int]:
        async with make(seeded_openrouter, max_attempts=20, backoff_base=0.001, backoff_max=0.005) as orc:
            keys = [f"r-{i}" for i in range(60)]
            results = await asyncio.gather(*(orc.chat(MSGS, model=MODEL, extra_headers=item(k)) for k in keys))
            return {k: r.calls for k, r in zip(keys, results, strict=True)}

    first = asyncio.run(go())
    assert first == dict(seeded_openrouter.calls)
    assert sum(first.values()) == seeded_openrouter.total_calls
    assert sum(first.values()) > len(first)  # some retries happened
    seeded_openrouter.reset()
    assert asyncio.run(go()) == first  # faults are decided per (item, attempt)


def test_gives_up_after_max_attempts(seeded_openrouter: FakeOpenRouter) -> None:
    seeded_openrouter.configure(fail_rates={"500": 1.0})

    err = chat_error(make(seeded_openrouter, max_attempts=4), model=MODEL, extra_headers=item("dead"))
    assert err.code == "provider_error" and err.retryable and not err.fatal
    assert err.calls == 4 == seeded_openrouter.calls["dead"] and err.status == 500
    assert "4 attempts" in err.message
    assert_no_key(err)


def test_gives_up_rate_limited_and_malformed(seeded_openrouter: FakeOpenRouter) -> None:
    async def one(kind: str) -> OpenRouterError:
        seeded_openrouter.configure(fail_rates={kind: 1.0}, retry_after=0.0)
        async with make(seeded_openrouter, max_attempts=2) as orc:
            with pytest.raises(OpenRouterError) as ei:
                await orc.chat(MSGS, model=MODEL, extra_headers=item(f"g-{kind}"))
            return ei.value

    limited = asyncio.run(one("429"))
    assert (limited.code, limited.calls, limited.retryable) == ("rate_limited", 2, True)
    assert "request rate" in limited.message
    malformed = asyncio.run(one("malformed"))
    assert (malformed.code, malformed.calls, malformed.retryable) == ("malformed_response", 2, True)


def test_connection_refused_is_retried_then_reported() -> None:
    port = free_port()

    err = chat_error(OpenRouterClient(api_key=API_KEY, base_url=f"http://127.0.0.1:{port}/api/v1", max_attempts=3,
                                      backoff_base=0.01, backoff_max=0.02), model=MODEL)
    assert err.code == "provider_error" and err.calls == 3 and err.retryable and err.status is None
    assert "Could not reach OpenRouter" in err.message
    assert_no_key(err)


# ---------------------------------------------------------------------- fatal and item errors


@pytest.mark.parametrize(("status", "code", "hint"), [
    (401, "invalid_api_key", "ask an operator to check OPENROUTER_API_KEY"),
    (402, "insufficient_credits", "ask an operator to add credits"),
])
def test_auth_and_credit_errors_are_fatal_at_once(seeded_openrouter: FakeOpenRouter, status: int, code: str,
                                                  hint: str) -> None:
    seeded_openrouter.configure(status_override=status)
    orc_ref: list[OpenRouterClient] = []

    async def go() -> OpenRouterError:
        async with make(seeded_openrouter, backoff_base=1.0, backoff_max=5.0) as orc:
            orc_ref.append(orc)
            with pytest.raises(OpenRouterError) as ei:
                await orc.chat(MSGS, model=MODEL, extra_headers=item("f"))
            return ei.value

    t0 = time.monotonic()
    err = asyncio.run(go())
    assert time.monotonic() - t0 < 2
    assert err.code == code and err.fatal and not err.retryable and err.status == status
    assert err.calls == 1 and seeded_openrouter.total_calls == 1
    assert hint in err.message and f"({status}" in err.message and "server's OpenRouter" in err.message
    assert err.operator  # the server's key or account: an operator's to fix, not the user's
    assert_no_key(err, orc_ref[0], orc_ref[0].limiter)
    assert pickle.loads(pickle.dumps(err)).__dict__ == err.__dict__


def test_wrong_key_gets_401(seeded_openrouter: FakeOpenRouter) -> None:
    seeded_openrouter.configure(api_key="sk-or-v1-the-right-one")

    err = chat_error(make(seeded_openrouter), model=MODEL)
    assert err.code == "invalid_api_key" and err.fatal and seeded_openrouter.total_calls == 1


def test_moderation_403_is_fatal_with_reason(seeded_openrouter: FakeOpenRouter) -> None:
    seeded_openrouter.configure(status_override=403, override_message="Your input was flagged " + "x" * 1000)

    err = chat_error(make(seeded_openrouter), model=MODEL)
    assert err.code == "forbidden" and err.fatal and err.calls == 1 and not err.operator
    assert "flagged" in err.message and len(err.message) < 500


def test_403_without_moderation_is_the_servers_key(seeded_openrouter: FakeOpenRouter) -> None:
    seeded_openrouter.configure(status_override=403, forbidden_moderation=False)

    err = chat_error(make(seeded_openrouter), model=MODEL)
    assert err.code == "key_forbidden" and err.fatal and err.operator and err.calls == 1
    assert "ask an operator" in err.message and "not permitted" in err.message and MODEL in err.message
    assert_no_key(err)


def test_unknown_model_is_fatal_bad_request(seeded_openrouter: FakeOpenRouter) -> None:
    seeded_openrouter.configure(known_models={MODEL})

    err = chat_error(make(seeded_openrouter), model="openai/gpt-99")
    assert err.code == "bad_request" and err.fatal and err.calls == 1 and err.status == 400
    assert "openai/gpt-99 is not a valid model ID" in err.message


def test_other_4xx_is_an_item_error(seeded_openrouter: FakeOpenRouter) -> None:
    seeded_openrouter.configure(status_override=400,
                              override_message="This endpoint's maximum context length is 8192 tokens")

    err = chat_error(make(seeded_openrouter), model=MODEL)
    assert err.code == "bad_request" and not err.fatal and not err.retryable and err.calls == 1
    assert "maximum context length" in err.message


def test_200_error_body_with_auth_code_is_fatal() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"error": {"code": 402, "message": "Insufficient credits"}})

    err = chat_error(OpenRouterClient(api_key=API_KEY, transport=httpx.MockTransport(handler)), model=MODEL)
    assert err.code == "insufficient_credits" and err.fatal and err.calls == 1


def test_key_never_leaks(seeded_openrouter: FakeOpenRouter, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # a provider that echoes the key back in its error text
    seeded_openrouter.configure(status_override=400, override_message=f"bad header Bearer {API_KEY}")

    async def go() -> tuple[OpenRouterClient, OpenRouterError]:
        async with make(seeded_openrouter) as orc:
            with pytest.raises(OpenRouterError) as ei:
                await orc.chat(MSGS, model=MODEL)
            seeded_openrouter.configure(status_override=None, fail_first_n=1, fail_first_kind="500")
            await orc.chat(MSGS, model=MODEL, extra_headers=item("leak"))  # logs a retry
            return orc, ei.value

    orc, err = asyncio.run(go())
    assert "***" in err.message
    assert_no_key(orc, err, err.args, caplog.text)
    # the key travels only in the Authorization header
    for req in seeded_openrouter.requests:
        assert API_KEY not in req["body"]
        assert [k for k, v in req["headers"].items() if API_KEY in v] == ["authorization"]


def test_empty_key_is_rejected_without_a_request() -> None:
    with pytest.raises(OpenRouterError) as ei:
        OpenRouterClient(api_key="")
    assert ei.value.code == "invalid_api_key" and ei.value.fatal


# ---------------------------------------------------------------------- helpers, cancellation


def test_retry_after_parsing() -> None:
    assert _retry_after(httpx.Headers({"Retry-After": "2"})) == 2.0
    assert _retry_after(httpx.Headers({"Retry-After": "0.25"})) == 0.25
    assert _retry_after(httpx.Headers({"retry-after-ms": "1500"})) == 1.5
    assert _retry_after(httpx.Headers({})) is None
    assert _retry_after(httpx.Headers({"Retry-After": "soon"})) is None
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=10), usegmt=True)
    assert 8 <= (_retry_after(httpx.Headers({"Retry-After": when})) or 0) <= 10
    past = format_datetime(datetime.now(UTC) - timedelta(seconds=10), usegmt=True)
    assert _retry_after(httpx.Headers({"Retry-After": past})) == 0.0


def test_malformed_shapes_without_choices_are_retried() -> None:
    bodies = [b"", b"[]", b'{"id": "x"}', b'{"choices": []}', b'{"choices": [{"index": 0}]}',
              b'{"choices": [{"error": {"message": "provider died"}, "finish_reason": "error"}]}']
    seen: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(1)
        if len(seen) <= len(bodies):
            return httpx.Response(200, content=bodies[len(seen) - 1])
        return httpx.Response(200, json={"model": "m", "choices": [{"message": {"content": None}}]})

    async def go() -> ChatResult:
        async with OpenRouterClient(api_key=API_KEY, transport=httpx.MockTransport(handler), max_attempts=10,
                                    backoff_base=0.001, backoff_max=0.002) as orc:
            return await orc.chat(MSGS, model=MODEL)

    res = asyncio.run(go())
    assert res.calls == len(bodies) + 1 and res.content == "" and res.cost_usd is None and res.prompt_tokens == 0


def test_a_reply_without_usage_cost_has_no_cost_but_its_tokens(seeded_openrouter: FakeOpenRouter) -> None:
    seeded_openrouter.configure(report_cost=False, cost_per_call=0.5)

    async def go() -> ChatResult:
        async with make(seeded_openrouter) as orc:
            return await orc.chat(MSGS, model=MODEL)

    res = asyncio.run(go())
    assert res.cost_usd is None and res.prompt_tokens > 0 and res.completion_tokens > 0
    assert "cost" not in orjson.dumps(seeded_openrouter.requests[0]).decode()  # nothing priced on the wire


def test_list_models(seeded_openrouter: FakeOpenRouter) -> None:
    seeded_openrouter.configure(models={MODEL: {"prompt": 6e-7, "completion": 2.5e-6}})

    async def go() -> list[dict[str, Any]]:
        async with make(seeded_openrouter) as orc:
            return await orc.list_models()

    [row] = asyncio.run(go())
    assert row["id"] == MODEL and row["pricing"]["prompt"] == "0.0000006" and seeded_openrouter.models_calls == 1


def test_cancellation_aborts_promptly(seeded_openrouter: FakeOpenRouter) -> None:
    seeded_openrouter.configure(fail_rates={"stall": 1.0}, stall_seconds=20)

    async def go() -> float:
        async with make(seeded_openrouter, timeout=httpx.Timeout(30.0)) as orc:
            task = asyncio.create_task(orc.chat(MSGS, model=MODEL))
            await asyncio.sleep(0.3)
            t0 = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return time.monotonic() - t0

    assert asyncio.run(go()) < 0.2
