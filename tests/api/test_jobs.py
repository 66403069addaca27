"""Jobs through the HTTP API against a real worker: lifecycle, events, listing, cancel, dependencies."""

from __future__ import annotations

import httpx
import orjson

from tests.support import wait_until


def submit(client: httpx.Client, **spec: object) -> dict:
    response = client.post("/v1/jobs", json={"kind": "test", "spec": spec})
    assert response.status_code == 201, response.text
    return response.json()


def wait_done(client: httpx.Client, job_id: str, timeout: float = 30) -> dict:
    job = client.get(f"/v1/jobs/{job_id}/wait", params={"timeout": timeout}).json()
    assert job["status"] in ("succeeded", "failed", "cancelled"), job
    return job


def test_job_runs_to_success_and_streams_its_events_in_order(client: httpx.Client) -> None:
    job = submit(client, steps=3, step_seconds=0.1)
    assert job["status"] == "queued" and job["attempt"] == 0

    with client.stream("GET", f"/v1/jobs/{job['id']}/events", headers={"Accept": "text/event-stream"}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [orjson.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:")]

    assert [e["type"] for e in events] == ["queued", "running", "progress", "progress", "progress", "succeeded"]
    assert [e["seq"] for e in events] == list(range(1, 7))
    assert [e["data"]["done"] for e in events if e["type"] == "progress"] == [1, 2, 3]

    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded"
    assert done["result"] == {"steps": 3, "attempt": 1}
    assert done["progress"]["done"] == 3 and done["progress"]["total"] == 3
    assert done["started_at"] and done["finished_at"] and done["error"] is None


def test_sse_replays_after_last_event_id(client: httpx.Client) -> None:
    job = wait_done(client, submit(client, steps=2)["id"])
    headers = {"Accept": "text/event-stream", "Last-Event-ID": "2"}
    with client.stream("GET", f"/v1/jobs/{job['id']}/events", headers=headers) as r:
        ids = [int(line[3:]) for line in r.iter_lines() if line.startswith("id:")]
    assert ids == [3, 4, 5]


def test_events_page_with_cursor(client: httpx.Client) -> None:
    job = wait_done(client, submit(client, steps=4)["id"])
    first = client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 3}).json()
    assert [e["seq"] for e in first["data"]] == [1, 2, 3] and first["has_more"]
    rest = client.get(f"/v1/jobs/{job['id']}/events", params={"after": first["next_cursor"]}).json()
    assert [e["type"] for e in rest["data"]] == ["progress", "progress", "progress", "succeeded"]
    assert not rest["has_more"]


def test_failed_job_says_why(client: httpx.Client) -> None:
    job = wait_done(client, submit(client, fail_with="the test asked for a failure")["id"])
    assert job["status"] == "failed"
    assert job["error"] == {"code": "test_failure", "message": "the test asked for a failure",
                            "user_error": True, "details": {}}
    events = client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    assert [e["type"] for e in events][-1] == "failed"
    assert sum(e["type"] in ("succeeded", "failed", "cancelled") for e in events) == 1


def test_list_filters_and_cursor_paging(client: httpx.Client) -> None:
    ids = []
    for i in range(5):
        r = client.post("/v1/jobs", json={"kind": "test", "labels": {"batch": "a" if i % 2 else "b"}})
        ids.append(r.json()["id"])
    page = client.get("/v1/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page["data"]] == ids[::-1][:2] and page["has_more"]
    seen = [j["id"] for j in page["data"]]
    while page["has_more"]:
        page = client.get("/v1/jobs", params={"limit": 2, "cursor": page["next_cursor"]}).json()
        seen += [j["id"] for j in page["data"]]
    assert seen == ids[::-1]
    labelled = client.get("/v1/jobs", params={"label": "batch:a"}).json()["data"]
    assert sorted(j["id"] for j in labelled) == sorted([ids[1], ids[3]])
    for job_id in ids:
        wait_done(client, job_id)
    assert len(client.get("/v1/jobs", params={"status": "succeeded", "kind": "test"}).json()["data"]) == 5
    assert client.get("/v1/jobs", params={"kind": "training"}).json()["data"] == []


def test_cancel_running_job_stops_it(client: httpx.Client) -> None:
    job = submit(client, steps=200, step_seconds=0.05)
    wait_until(lambda: client.get(f"/v1/jobs/{job['id']}").json()["status"] == "running", 20, "running")
    r = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["cancel_requested_at"]
    done = wait_done(client, job["id"])
    assert done["status"] == "cancelled"
    assert done["progress"]["done"] < 200
    types = [e["type"] for e in client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]]
    assert "cancel_requested" in types and types[-1] == "cancelled"
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200  # cancelling again is harmless


def test_heartbeats_keep_a_silent_step_longer_than_the_lease(client: httpx.Client) -> None:
    """A step that writes nothing for longer than the lease (3 s in tests) keeps its lease through heartbeats
    alone: no requeue, one attempt."""
    job = submit(client, steps=1, step_seconds=4.5)
    done = wait_done(client, job["id"])
    assert done["status"] == "succeeded" and done["attempt"] == 1
    types = [e["type"] for e in client.get(f"/v1/jobs/{job['id']}/events").json()["data"]]
    assert types == ["queued", "running", "progress", "succeeded"]


def test_cancel_finished_job_is_a_conflict(client: httpx.Client) -> None:
    job = wait_done(client, submit(client)["id"])
    r = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 409
    assert "already succeeded" in r.json()["detail"]


def test_dependent_job_waits_then_runs(client: httpx.Client) -> None:
    first = submit(client, steps=5, step_seconds=0.1)
    second = client.post("/v1/jobs", json={"kind": "test", "depends_on": [first["id"]]}).json()
    assert second["status"] == "pending"
    assert wait_done(client, second["id"])["status"] == "succeeded"
    a = client.get(f"/v1/jobs/{first['id']}").json()
    b = client.get(f"/v1/jobs/{second['id']}").json()
    assert b["started_at"] > a["finished_at"]


def test_dependent_of_a_failed_job_is_cancelled(client: httpx.Client) -> None:
    first = submit(client, steps=3, step_seconds=0.1, fail_with="boom")
    second = client.post("/v1/jobs", json={"kind": "test", "depends_on": [first["id"]]}).json()
    done = wait_done(client, second["id"])
    assert done["status"] == "cancelled"
    events = client.get(f"/v1/jobs/{second['id']}/events").json()["data"]
    assert first["id"] in events[-1]["data"]["reason"]
    r = client.post("/v1/jobs", json={"kind": "test", "depends_on": [first["id"]]})
    assert r.status_code == 422 and "depends_on[0]" in r.json()["detail"]


def test_cancel_pending_job_is_immediate(client: httpx.Client) -> None:
    first = submit(client, steps=40, step_seconds=0.05)
    second = client.post("/v1/jobs", json={"kind": "test", "depends_on": [first["id"]]}).json()
    r = client.post(f"/v1/jobs/{second['id']}/cancel")
    assert r.json()["status"] == "cancelled"
    client.post(f"/v1/jobs/{first['id']}/cancel")


def test_wait_returns_current_state_on_timeout(client: httpx.Client) -> None:
    job = submit(client, steps=100, step_seconds=0.05)
    r = client.get(f"/v1/jobs/{job['id']}/wait", params={"timeout": 0.3})
    assert r.status_code == 200 and r.json()["status"] in ("queued", "running")
    client.post(f"/v1/jobs/{job['id']}/cancel")
