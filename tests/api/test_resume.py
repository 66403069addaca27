"""POST /v1/jobs/{id}/resume: a failed or cancelled job continues as the same run, through a real worker."""

from __future__ import annotations

import httpx

from tests.conftest import make_client
from tests.support import Stack, wait_until

TERMINAL = ("succeeded", "failed", "cancelled")


def submit(client: httpx.Client, **body: object) -> dict:
    response = client.post("/v1/jobs", json={"kind": "test", **body})
    assert response.status_code == 201, response.text
    return response.json()


def wait_done(client: httpx.Client, job_id: str, timeout: float = 30) -> dict:
    job = client.get(f"/v1/jobs/{job_id}/wait", params={"timeout": timeout}).json()
    assert job["status"] in TERMINAL, job
    return job


def event_types(client: httpx.Client, job_id: str) -> list[str]:
    return [e["type"] for e in client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]]


def resume(client: httpx.Client, job_id: str) -> httpx.Response:
    return client.post(f"/v1/jobs/{job_id}/resume")


def test_a_cancelled_running_job_resumes_and_succeeds(client: httpx.Client) -> None:
    job = submit(client, spec={"steps": 20, "step_seconds": 0.1})
    wait_until(lambda: client.get(f"/v1/jobs/{job['id']}").json()["status"] == "running", 20, "running")
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    assert wait_done(client, job["id"])["status"] == "cancelled"

    r = resume(client, job["id"])
    assert r.status_code == 200, r.text
    resumed = r.json()
    assert resumed["id"] == job["id"] and resumed["status"] in ("queued", "running")
    assert resumed["error"] is None and resumed["finished_at"] is None and resumed["cancel_requested_at"] is None
    assert resumed["preemptions"] == 0

    done = wait_done(client, job["id"])
    assert done["status"] == "succeeded" and done["result"] == {"steps": 20, "attempt": 1}
    types = event_types(client, job["id"])
    after = types[types.index("resumed") + 1:]
    assert "cancelled" in types[:types.index("resumed")]
    assert [t for t in after if t in TERMINAL] == ["succeeded"] and after[-1] == "succeeded"
    listed = {j["id"]: j for j in client.get("/v1/jobs").json()["data"]}
    assert listed[job["id"]]["status"] == "succeeded" and listed[job["id"]]["preemptions"] == 0


def test_a_job_cancelled_right_after_submit_resumes(client: httpx.Client) -> None:
    job = submit(client, spec={"steps": 3, "step_seconds": 0.2})
    client.post(f"/v1/jobs/{job['id']}/cancel")  # queued: cancelled at once; running: at its next step
    assert wait_done(client, job["id"])["status"] == "cancelled"

    assert resume(client, job["id"]).status_code == 200
    assert wait_done(client, job["id"])["status"] == "succeeded"
    events = client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
    resumed = next(e for e in events if e["type"] == "resumed")
    assert resumed["data"]["previous_status"] == "cancelled"
    assert [e["type"] for e in events if e["type"] in TERMINAL] == ["cancelled", "succeeded"]


def test_a_failed_job_resumes_with_a_fresh_attempt_budget(client: httpx.Client) -> None:
    job = wait_done(client, submit(client, spec={"fail_with": "still broken"}, max_attempts=1)["id"])
    assert job["status"] == "failed" and job["attempt"] == 1

    assert resume(client, job["id"]).status_code == 200
    again = wait_done(client, job["id"])
    # It ran again (the spent attempt did not stop it) and failed again, for its own reason.
    assert again["status"] == "failed" and again["attempt"] == 1
    assert again["error"]["message"] == "still broken"
    types = event_types(client, job["id"])
    assert types[types.index("resumed"):][:2] == ["resumed", "running"]
    assert [t for t in types if t in TERMINAL] == ["failed", "failed"]


def test_only_failed_or_cancelled_jobs_resume(client: httpx.Client) -> None:
    done = wait_done(client, submit(client)["id"])
    r = resume(client, done["id"])
    assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"
    assert "already succeeded" in r.json()["detail"] and "only failed or cancelled" in r.json()["detail"]

    running = submit(client, spec={"steps": 100, "step_seconds": 0.05})
    wait_until(lambda: client.get(f"/v1/jobs/{running['id']}").json()["status"] == "running", 20, "running")
    r = resume(client, running["id"])
    assert r.status_code == 409 and "is running" in r.json()["detail"]
    client.post(f"/v1/jobs/{running['id']}/cancel")
    assert wait_done(client, running["id"])["status"] == "cancelled"
    assert resume(client, running["id"]).status_code == 200
    r = resume(client, running["id"])  # a second resume while the first one's run is on its way
    assert r.status_code == 409 and r.json()["detail"].endswith("only failed or cancelled jobs can be resumed.")
    client.post(f"/v1/jobs/{running['id']}/cancel")


def test_a_dependent_resumes_only_once_its_dependency_succeeded(client: httpx.Client) -> None:
    first = submit(client, spec={"steps": 10, "step_seconds": 0.1})
    second = submit(client, depends_on=[first["id"]])
    assert client.post(f"/v1/jobs/{second['id']}/cancel").json()["status"] == "cancelled"

    r = resume(client, second["id"])
    assert r.status_code == 409 and first["id"] in r.json()["detail"] and "Resume" in r.json()["detail"]
    assert wait_done(client, first["id"])["status"] == "succeeded"
    assert resume(client, second["id"]).status_code == 200
    assert wait_done(client, second["id"])["status"] == "succeeded"


def test_another_teams_job_is_not_found(stack: Stack, client: httpx.Client) -> None:
    job = wait_done(client, submit(client, spec={"fail_with": "x"})["id"])
    with make_client(stack.base_url) as other:
        r = resume(other, job["id"])
        assert r.status_code == 404 and r.json()["code"] == "not_found"
        assert resume(other, "job_does_not_exist").status_code == 404
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "failed"  # untouched
