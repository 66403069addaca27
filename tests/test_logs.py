"""Logs an operator can use: JSON lines that say which job, attempt, team and request they are about, and never
a key (app/logs.py)."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import httpx
import structlog
from pydantic import SecretStr

from app.logs import REDACTED, make_formatter
from app.settings import Settings
from tests.conftest import OPENROUTER_TEST_KEY
from tests.support import Stack, wait_until

KEYS = ("Bearer someopaquetoken", "tq_abc123_s3cr3tpart", "sk-or-v1-0123456789abcdef", "tml-0123456789abcdef",
        "hf_AbCdEfGhIjKlMnOp")


def _lines(settings: Settings, write: Any, *, console: bool = False) -> list[str]:
    """What `write(logger)` logs through the formatter every tuneq process uses."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(make_formatter(settings, console=console))
    logger = logging.getLogger(f"tests.logs.{id(stream)}")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        write(logger)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue().splitlines()


def test_keys_are_masked_in_messages_fields_and_tracebacks() -> None:
    secret = "my-own-tinker-secret-value"
    settings = Settings(_env_file=None, tinker_api_key=SecretStr(secret))  # type: ignore[call-arg]

    def write(logger: logging.Logger) -> None:
        logger.info("calling with %s, %s and %s", KEYS[0], KEYS[1], secret)
        logger.info("headers", extra={"job_id": "job_1"})
        structlog.wrap_logger(logger, processors=[structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
                              wrapper_class=structlog.stdlib.BoundLogger).info(
            "nested", payload={"auth": [KEYS[2], {"k": KEYS[3]}]})
        try:
            raise RuntimeError(f"refused {KEYS[4]} and {secret}")
        except RuntimeError:
            logger.exception("crashed")

    lines = _lines(settings, write)
    text = "\n".join(lines)
    assert all(key.split()[-1] not in text for key in KEYS) and secret not in text, text
    first = json.loads(lines[0])
    # What the key was stays readable: the word Bearer and a tuneq key's public prefix.
    assert first["event"] == f"calling with Bearer {REDACTED}, tq_abc123_{REDACTED} and {REDACTED}"
    assert json.loads(lines[1])["job_id"] == "job_1"
    assert json.loads(lines[2])["payload"] == {"auth": [REDACTED, {"k": REDACTED}]}
    assert "RuntimeError" in json.loads(lines[-1])["exception"]


def test_console_format_is_masked_too() -> None:
    lines = _lines(Settings(_env_file=None), lambda logger: logger.warning("key %s", KEYS[2]),  # type: ignore[call-arg]
                   console=True)
    assert KEYS[2] not in lines[0] and REDACTED in lines[0] and not lines[0].startswith("{")


def test_ordinary_words_are_not_masked() -> None:
    lines = _lines(Settings(_env_file=None), lambda logger: logger.info(  # type: ignore[call-arg]
        "xhtml-page hf_token unset; shtml-x"))
    assert json.loads(lines[0])["event"] == "xhtml-page hf_token unset; shtml-x"


def _worker_lines(stack: Stack) -> list[dict[str, Any]]:
    parsed = []
    for proc in stack.workers:
        for line in proc.log_path.read_text(errors="replace").splitlines():  # type: ignore[attr-defined]
            if line.startswith("{"):
                parsed.append(json.loads(line))
    return parsed


def test_worker_lines_about_a_job_carry_its_id_attempt_and_team(stack: Stack, client: httpx.Client) -> None:
    job = client.post("/v1/jobs", json={"kind": "test", "spec": {"steps": 1}}).json()
    wait_until(lambda: client.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded", 30, "the job to end")

    about = wait_until(lambda: [line for line in _worker_lines(stack) if line.get("job_id") == job["id"]], 10,
                       "the worker's lines about the job")
    assert any("claimed" in line["event"] for line in about)
    assert any(line["event"].endswith("succeeded") for line in about)
    for line in about:
        assert line["attempt"] == 1 and line["team"].startswith("team_") and line["kind"] == "test", line
        assert line["level"] and line["timestamp"]


def test_a_request_id_is_kept_or_made_and_returned(stack: Stack, client: httpx.Client) -> None:
    given = client.get("/v1/jobs", headers={"X-Request-ID": "trace-42.a"})
    assert given.headers["x-request-id"] == "trace-42.a"
    made = client.get("/v1/jobs")
    assert len(made.headers["x-request-id"]) == 32
    # A value that could forge log lines or headers is replaced, not echoed.
    odd = client.get("/v1/jobs", headers={"X-Request-ID": "a b\"c" + "x" * 200})
    assert odd.headers["x-request-id"] != "a b\"c" and len(odd.headers["x-request-id"]) == 32
    refused = httpx.get(f"{stack.base_url}/v1/jobs", headers={"X-Request-ID": "no-key"})
    assert refused.status_code == 401 and refused.headers["x-request-id"] == "no-key"


def test_the_worker_never_logs_the_provider_key(stack: Stack, client: httpx.Client) -> None:
    """The suite-wide check runs at session end (tests/conftest.py); this one fails early, naming the job."""
    job = client.post("/v1/jobs", json={"kind": "generation", "spec": {"prompt": "Teach {{ topic }}.",
                                                                       "topics": ["sums"]}}).json()
    wait_until(lambda: client.get(f"/v1/jobs/{job['id']}").json()["status"] in ("succeeded", "failed"), 60,
               "the generation job to end")
    for proc in stack.workers:
        assert OPENROUTER_TEST_KEY not in proc.log_path.read_text(errors="replace")  # type: ignore[attr-defined]
