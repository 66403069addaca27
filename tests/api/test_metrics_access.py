"""GET /metrics: with TUNEQ_METRICS_TOKEN it needs that token; without it, only loopback clients get it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import Stack, start_api_only

TOKEN = "metrics-token-for-tests-0123456789"


@pytest.fixture
def api_with_token(backend: dict[str, str], tmp_path: Path) -> Iterator[Stack]:
    stack = start_api_only(backend, tmp_path, TUNEQ_METRICS_TOKEN=TOKEN)
    yield stack
    stack.stop()


def test_metrics_need_the_token_when_one_is_set(api_with_token: Stack) -> None:
    url = f"{api_with_token.base_url}/metrics"
    r = httpx.get(url)
    assert r.status_code == 401 and "TUNEQ_METRICS_TOKEN" in r.json()["detail"]
    assert TOKEN not in r.text
    assert httpx.get(url, headers={"Authorization": "Bearer not-the-token"}).status_code == 401
    r = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and "tuneq_jobs" in r.text
    assert "team" not in r.text  # aggregates by kind and status only


def test_without_a_token_metrics_answer_only_loopback(stack: Stack) -> None:
    url = f"{stack.base_url}/metrics"
    assert httpx.get(url).status_code == 200
    # The same request relayed by a proxy on this host for a client elsewhere (uvicorn trusts loopback
    # proxies' X-Forwarded-For): not served.
    r = httpx.get(url, headers={"X-Forwarded-For": "203.0.113.7"})
    assert r.status_code == 404, r.text
