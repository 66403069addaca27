"""GET /metrics: what is waiting and running, for Prometheus, without a key."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support import Stack, wait_until


def _samples(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = httpx.get(f"{stack.base_url}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def test_metrics_count_running_and_pending_jobs(stack: Stack, client: httpx.Client) -> None:
    running = client.post("/v1/jobs", json={"kind": "test", "spec": {"steps": 1, "step_seconds": 3}}).json()
    client.post("/v1/jobs", json={"kind": "test", "depends_on": [running["id"]]})
    wait_until(lambda: client.get(f"/v1/jobs/{running['id']}").json()["status"] == "running", 20, "running")

    samples = _samples(stack)
    assert samples[("tuneq_jobs", (("kind", "test"), ("status", "running")))] >= 1
    assert samples[("tuneq_jobs", (("kind", "test"), ("status", "pending")))] >= 1
    assert all(v >= 0 for (name, _), v in samples.items() if name == "tuneq_oldest_queued_job_seconds")


def test_metrics_show_how_long_running_jobs_went_without_progress(stack: Stack, client: httpx.Client) -> None:
    job = client.post("/v1/jobs", json={"kind": "test", "spec": {"steps": 1, "step_seconds": 3}}).json()
    wait_until(lambda: client.get(f"/v1/jobs/{job['id']}").json()["status"] == "running", 20, "running")

    samples = _samples(stack)
    silent = samples[("tuneq_job_seconds_since_progress", (("kind", "test"),))]
    assert silent >= 0
    # One series per kind, never one per job.
    assert all(dict(labels).keys() == {"kind"} for (name, labels) in samples
               if name == "tuneq_job_seconds_since_progress")
    r = httpx.get(f"{stack.base_url}/metrics")
    assert "# HELP tuneq_job_seconds_since_progress" in r.text and "per job" in r.text
    client.post(f"/v1/jobs/{job['id']}/cancel")
