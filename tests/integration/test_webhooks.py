"""Webhooks end to end: a job (or pipeline) with a `webhook_url` ends through the real worker, and a real
loopback receiver (allowed by this module's settings) gets one delivery per terminal state, signed so that the
Standard Webhooks library verifies it; a receiver that fails twice gets it on the third try; internal addresses
are refused at submit and again at send time (checked with a resolver the test controls)."""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

from app.services import webhook_targets
from app.services.webhook_targets import TargetRefused
from tests.api.local_api import LocalApi, local_api, new_key
from tests.support import Stack, wait_until
from workers import webhooks as sender

SECRET = "whsec_" + base64.b64encode(os.urandom(24)).decode()


class Receiver:
    """A real HTTP server on loopback that records every POST; `fail[path] = n` answers 500 to the first n."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail: dict[str, int] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.lock:
                    failing = receiver.fail.get(self.path, 0)
                    receiver.fail[self.path] = max(0, failing - 1)
                    receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                              "answered": 500 if failing else 204})
                self.send_response(500 if failing else 204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def at(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["path"] == path]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


@contextmanager
def settings_env(**env: str) -> Iterator[None]:
    """This process's settings (the in-process API's too) with `env` set."""
    from app.settings import get_settings

    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    get_settings.cache_clear()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        get_settings.cache_clear()


HOOK_ENV = {"TUNEQ_WEBHOOK_SECRET": SECRET, "TUNEQ_WEBHOOK_ALLOW_PRIVATE": "1",
            "TUNEQ_WEBHOOK_RETRY_BASE_SECONDS": "0.3", "TUNEQ_WEBHOOK_INTERVAL_SECONDS": "0.2"}


@pytest.fixture(scope="module")
def hooks(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalApi]:
    """An API that accepts loopback webhook URLs, and a worker whose sweep sends them with short backoff."""
    own = Stack(env={**stack.env, **HOOK_ENV}, base_url=stack.base_url,
                logs=tmp_path_factory.mktemp("webhook-worker"))
    own.start_worker(concurrency=1)
    try:
        with settings_env(**HOOK_ENV), local_api() as api:
            yield api
    finally:
        own.stop_workers()


@pytest.fixture
def api(hooks: LocalApi) -> Iterator[httpx.Client]:
    _, _, key = new_key()
    with httpx.Client(base_url=hooks.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        yield c


def submit(client: httpx.Client, url: str, **spec: Any) -> dict[str, Any]:
    # One attempt: a failing job ends at once instead of after its retries' backoff.
    response = client.post("/v1/jobs", json={"kind": "test", "spec": spec, "webhook_url": url, "max_attempts": 1})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def wait(client: httpx.Client, job_id: str) -> dict[str, Any]:
    return client.get(f"/v1/jobs/{job_id}/wait", params={"timeout": 60}).json()  # type: ignore[no-any-return]


def deliveries(client: httpx.Client, path: str) -> list[dict[str, Any]]:
    response = client.get(f"{path}/webhook-deliveries")
    assert response.status_code == 200, response.text
    return response.json()["data"]  # type: ignore[no-any-return]


def settled(client: httpx.Client, path: str, count: int = 1) -> list[dict[str, Any]]:
    """The deliveries once `count` exist and none is pending any more."""
    return wait_until(lambda: (d := deliveries(client, path)) and len(d) >= count
                      and all(x["status"] != "pending" for x in d) and d, 60, f"deliveries of {path}")


def verified(request: dict[str, Any]) -> dict[str, Any]:
    """The body, once the Standard Webhooks library accepts its signature."""
    return Webhook(SECRET).verify(request["body"], request["headers"])  # type: ignore[no-any-return]


def test_each_terminal_state_is_delivered_once_and_signed(api: httpx.Client, receiver: Receiver) -> None:
    ok = submit(api, f"{receiver.url}/ok")
    bad = submit(api, f"{receiver.url}/bad", fail_with="the test asked for it")
    assert wait(api, ok["id"])["status"] == "succeeded"
    assert wait(api, bad["id"])["status"] == "failed"
    for job, status in ((ok, "succeeded"), (bad, "failed")):
        [delivery] = settled(api, f"/v1/jobs/{job['id']}")
        assert delivery["status"] == "delivered" and delivery["attempts"] == 1, delivery
        assert delivery["event_type"] == f"job.{status}" and delivery["last_status_code"] == 204
        [request] = receiver.at(f"/{'ok' if status == 'succeeded' else 'bad'}")
        body = verified(request)
        assert request["headers"]["webhook-id"] == delivery["id"]
        assert body["type"] == f"job.{status}"
        assert body["data"]["id"] == job["id"] and body["data"]["status"] == status
        assert body["data"]["kind"] == "test"
    assert "the test asked for it" in verified(receiver.at("/bad")[0])["data"]["error"]["message"]
    # A forged body does not verify.
    forged = {**receiver.at("/ok")[0], "body": receiver.at("/ok")[0]["body"].replace(b"succeeded", b"failed")}
    with pytest.raises(Exception, match="signature"):
        verified(forged)

    # Resumed, the failed job ends again: a second terminal state, a second delivery (a new webhook-id).
    assert api.post(f"/v1/jobs/{bad['id']}/resume").status_code == 200
    assert wait(api, bad["id"])["status"] == "failed"
    second = settled(api, f"/v1/jobs/{bad['id']}", count=2)
    assert [d["status"] for d in second] == ["delivered", "delivered"]
    assert len({r["headers"]["webhook-id"] for r in receiver.at("/bad")}) == 2
    assert len(receiver.at("/ok")) == 1


def test_a_cancelled_job_is_delivered(api: httpx.Client, receiver: Receiver) -> None:
    job = submit(api, f"{receiver.url}/cancelled", steps=600, step_seconds=0.1)
    assert api.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    assert wait(api, job["id"])["status"] == "cancelled"
    [delivery] = settled(api, f"/v1/jobs/{job['id']}")
    assert delivery["event_type"] == "job.cancelled" and delivery["status"] == "delivered"
    [request] = receiver.at("/cancelled")
    assert verified(request)["data"]["status"] == "cancelled"


def test_a_receiver_that_fails_twice_gets_it_on_the_third_try(api: httpx.Client, receiver: Receiver) -> None:
    receiver.fail["/flaky"] = 2
    job = submit(api, f"{receiver.url}/flaky")
    assert wait(api, job["id"])["status"] == "succeeded"
    [delivery] = settled(api, f"/v1/jobs/{job['id']}")
    assert delivery["status"] == "delivered" and delivery["attempts"] == 3, delivery
    requests = receiver.at("/flaky")
    assert [r["answered"] for r in requests] == [500, 500, 204]
    assert len({r["headers"]["webhook-id"] for r in requests}) == 1  # the same delivery, retried
    assert all(verified(r)["data"]["id"] == job["id"] for r in requests)


def test_a_pipeline_is_delivered_once_when_its_last_step_ends(api: httpx.Client, receiver: Receiver) -> None:
    body = {"steps": {"a": {"kind": "test", "spec": {}}, "b": {"kind": "test", "spec": {}, "depends_on": ["a"]}},
            "webhook_url": f"{receiver.url}/pipeline"}
    response = api.post("/v1/pipelines", json=body)
    assert response.status_code == 201, response.text
    pipeline = response.json()
    [delivery] = settled(api, f"/v1/pipelines/{pipeline['id']}")
    assert delivery["event_type"] == "pipeline.succeeded" and delivery["status"] == "delivered"
    [request] = receiver.at("/pipeline")
    data = verified(request)["data"]
    assert data["id"] == pipeline["id"] and set(data["steps"]) == {"a", "b"}


def test_internal_addresses_are_refused_at_submit_under_default_settings(backend: dict[str, str]) -> None:
    _, _, key = new_key()
    headers = {"Authorization": f"Bearer {key}"}
    with settings_env(TUNEQ_WEBHOOK_SECRET=SECRET, TUNEQ_WEBHOOK_ALLOW_PRIVATE="0"), local_api() as default, \
            httpx.Client(base_url=default.base_url, headers=headers, timeout=30) as client:
        for url in ("http://127.0.0.1:9/hook", "http://localhost:9/hook", "http://169.254.169.254/latest",
                    "http://[::1]/hook", "http://user:pw@example.com/hook"):
            response = client.post("/v1/jobs", json={"kind": "test", "spec": {}, "webhook_url": url})
            assert response.status_code == 422, (url, response.text)
            problem = response.json()
            assert problem["errors"][0]["loc"] == ["body", "webhook_url"]
            assert "webhook_url" in problem["detail"]
        pipeline = client.post("/v1/pipelines", json={"steps": {"a": {"kind": "test", "spec": {}}},
                                                      "webhook_url": "http://localhost:9/hook"})
        assert pipeline.status_code == 422 and pipeline.json()["errors"][0]["loc"] == ["body", "webhook_url"]
    with settings_env(TUNEQ_WEBHOOK_SECRET=""), local_api() as unsigned, \
            httpx.Client(base_url=unsigned.base_url, headers=headers, timeout=30) as client:
        response = client.post("/v1/jobs", json={"kind": "test", "spec": {},
                                                 "webhook_url": "https://example.com/hook"})
        assert response.status_code == 422 and "TUNEQ_WEBHOOK_SECRET" in response.json()["detail"]


# ---- the send-time check, with a resolver the test controls -------------------------------------------------

def _settings(**overrides: Any) -> Any:
    from app.settings import get_settings

    return get_settings().model_copy(update={"webhook_secret": SecretStr(SECRET), "webhook_allow_private": False,
                                             "webhook_allowed_networks": [], **overrides})


def _claimed(url: str) -> sender.Claimed:
    return sender.Claimed("whd_0123456789ab0123456789abcdef", 1, "job.succeeded", {"id": "job_x"},
                          datetime.now(UTC), url)


def test_a_name_that_later_resolves_to_a_private_address_is_refused_at_send_time(receiver: Receiver) -> None:
    from app.services import webhooks

    answers = iter([["93.184.215.14"], ["127.0.0.1"]])  # public at submit, rebound to loopback by send time
    resolver = lambda host, port: next(answers)  # noqa: E731
    url = f"http://hooks.example.test:{receiver.url.rsplit(':', 1)[1]}/rebound"
    webhooks.check_url(url, _settings(), ["body", "webhook_url"], resolver)  # passes: a public address
    with pytest.raises(TargetRefused, match="loopback"):
        sender.send(_claimed(url), _settings(), resolver)
    # One internal address among public ones is enough to refuse.
    with pytest.raises(TargetRefused, match="link-local"):
        sender.send(_claimed(url), _settings(), lambda h, p: ["93.184.215.14", "169.254.169.254"])
    assert receiver.at("/rebound") == []


def test_a_send_connects_to_the_address_it_checked(receiver: Receiver) -> None:
    """The name is resolved once, by the check; the connection goes to that address with the name as Host."""
    port = receiver.url.rsplit(":", 1)[1]
    calls: list[str] = []

    def resolver(host: str, _port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"]

    code, error = sender.send(_claimed(f"http://hooks.example.test:{port}/pinned"),
                              _settings(webhook_allow_private=True), resolver)
    assert (code, error) == (204, None) and calls == ["hooks.example.test"]
    [request] = receiver.at("/pinned")
    assert request["headers"]["Host"] == f"hooks.example.test:{port}"
    assert orjson.loads(request["body"])["data"] == {"id": "job_x"}
    assert verified(request)["type"] == "job.succeeded"


def test_the_address_policy() -> None:
    policy = webhook_targets.AddressPolicy(_settings())
    public = webhook_targets.AddressPolicy(_settings())
    assert public.pick("h", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]) == "93.184.215.14"
    for address, why in (("10.1.2.3", "private"), ("::ffff:127.0.0.1", "loopback"), ("fd00:ec2::254", "link-local"),
                         ("224.0.0.1", "multicast"), ("0.0.0.0", "unspecified"), ("100.64.0.1", "private")):
        with pytest.raises(TargetRefused, match=why):
            policy.pick("h", [address])
    private = webhook_targets.AddressPolicy(_settings(webhook_allow_private=True))
    assert private.pick("h", ["10.1.2.3"]) == "10.1.2.3"
    with pytest.raises(TargetRefused, match="link-local"):  # metadata needs an explicit network
        private.pick("h", ["169.254.169.254"])
    listed = webhook_targets.AddressPolicy(_settings(webhook_allowed_networks=["169.254.0.0/16"]))
    assert listed.pick("h", ["169.254.169.254"]) == "169.254.169.254"
