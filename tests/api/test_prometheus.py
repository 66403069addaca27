"""/metrics for an operator: job facts that move as jobs run (read from SQL, so any API process answers for
every worker) and request durations per route, summed over every process of `tuneq api --workers N`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import make_client
from tests.support import ROOT, Stack, free_port, wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(base_url: str) -> Samples:
    r = httpx.get(f"{base_url}/metrics")
    assert r.status_code == 200, r.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_job_metrics_move_when_jobs_run(stack: Stack, client: httpx.Client) -> None:
    before = _samples(stack.base_url)
    job = client.post("/v1/jobs", json={"kind": "test", "spec": {"steps": 1}}).json()
    generation = client.post("/v1/jobs", json={"kind": "generation", "spec": {
        "prompt": "Teach {{ topic }}.", "topics": ["sums", "primes"]}}).json()
    for j in (job, generation):
        wait_until(lambda j=j: client.get(f"/v1/jobs/{j['id']}").json()["status"] == "succeeded", 60, "the jobs")
    client.get(f"/v1/jobs/{job['id']}")
    after = _samples(stack.base_url)

    def moved(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert moved("tuneq_jobs_finished_total", kind="test", status="succeeded") >= 1
    assert moved("tuneq_job_run_seconds_count", kind="test") >= 1
    assert moved("tuneq_job_queue_wait_seconds_count", kind="generation") >= 1
    # Each bucket counts the runs at most that long; +Inf counts them all.
    assert _value(after, "tuneq_job_run_seconds_bucket", kind="test", le="+Inf") == \
        _value(after, "tuneq_job_run_seconds_count", kind="test")
    assert _value(after, "tuneq_job_run_seconds_bucket", kind="test", le="1.0") <= \
        _value(after, "tuneq_job_run_seconds_bucket", kind="test", le="15.0")
    assert moved("tuneq_provider_calls_total", provider="openrouter") >= 2
    assert moved("tuneq_provider_tokens_total", provider="openrouter", direction="completion") > 0
    assert ("tuneq_job_preemptions_total", (("kind", "test"),)) in after
    assert ("tuneq_job_retries_total", (("kind", "test"),)) in after
    # Requests by route template, never by raw path (a job id would make a series per job).
    assert moved("tuneq_http_request_duration_seconds_count", method="GET", route="/v1/jobs/{job_id}",
                 status="200") >= 2
    assert not any(job["id"] in dict(labels).get("route", "") for _, labels in after)


@pytest.fixture
def two_process_api(backend: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """`tuneq api --workers 2` on the test database, with its own var dir (and so its own metrics dir)."""
    stale = tmp_path / "var" / "metrics" / "counter_999999.db"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by an earlier run")
    port = free_port()
    env = {**os.environ, **backend, "TUNEQ_VAR_DIR": str(tmp_path / "var"), "TUNEQ_PORT": str(port),
           "TUNEQ_RUN_REAPER": "0"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "api", "--workers", "2"], cwd=ROOT, env=env,
                            stdout=open(tmp_path / "api.log", "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"

    def answering() -> bool:
        try:
            return httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None

    try:
        wait_until(answering, 60, "tuneq api --workers 2")
        assert proc.poll() is None, (tmp_path / "api.log").read_text()
        assert not stale.exists()  # emptied at start: an earlier run's counts are not summed in
        yield base_url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_request_counts_sum_over_every_api_process(two_process_api: str, stack: Stack) -> None:
    requests = 40
    with make_client(two_process_api) as client:
        key = client.headers["authorization"]
    for _ in range(requests):  # a new connection each time, so both processes take some
        assert httpx.get(f"{two_process_api}/v1/jobs", headers={"Authorization": key}).status_code == 200
    # Whichever process answers the scrape, it reports every process's requests.
    for _ in range(4):
        samples = _samples(two_process_api)
        assert _value(samples, "tuneq_http_request_duration_seconds_count", method="GET", route="/v1/jobs",
                      status="200") == requests
    # Job facts come from SQL: this API reports the same as the session's own API process.
    def finished(samples: Samples) -> Samples:
        return {k: v for k, v in samples.items() if k[0] == "tuneq_jobs_finished_total"}

    assert finished(_samples(two_process_api)) == finished(_samples(stack.base_url))
