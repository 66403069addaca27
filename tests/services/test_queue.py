"""Wake-ups are LPUSHed by hand (app/queue.py); they must stay the messages Celery itself would send."""

from __future__ import annotations

import base64
import json
import uuid

import redis

from app.queue import RUN_JOB, get_sender, redis_py_url


def _pop(r: redis.Redis, queue: str) -> dict:
    raw = r.rpop(queue)
    assert raw is not None, f"nothing was published to {queue}"
    return json.loads(raw)


def test_wakeup_matches_the_message_celery_send_task_writes(backend: dict[str, str]) -> None:
    sender = get_sender()
    url = redis_py_url(backend["TUNEQ_BROKER_URL"])
    assert url is not None
    r = redis.Redis.from_url(url)
    queue = f"envelope-check-{uuid.uuid4().hex[:8]}"  # no worker consumes it

    sender.celery.send_task(RUN_JOB, args=["job_ref"], queue=queue)
    reference = _pop(r, queue)
    sender.send("job_ours", queue)
    ours = _pop(r, queue)
    r.delete(f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")

    # The same envelope, headers and properties, key for key.
    assert ours.keys() == reference.keys()
    assert ours["headers"].keys() == reference["headers"].keys()
    assert ours["properties"].keys() - {"reply_to"} == reference["properties"].keys() - {"reply_to"}
    for key in ("content-type", "content-encoding"):
        assert ours[key] == reference[key]
    assert ours["properties"]["delivery_info"] == reference["properties"]["delivery_info"]
    for key in ("delivery_mode", "priority", "body_encoding"):
        assert ours["properties"][key] == reference["properties"][key]
    for key in ("lang", "task", "retries", "timelimit", "eta", "expires", "group"):
        assert ours["headers"][key] == reference["headers"][key]
    # The task id is Celery's correlation id, and the body carries the job id as the only argument.
    assert ours["headers"]["id"] == ours["properties"]["correlation_id"] == ours["headers"]["root_id"]
    ours_body = json.loads(base64.b64decode(ours["body"]))
    reference_body = json.loads(base64.b64decode(reference["body"]))
    assert ours_body[0] == ["job_ours"] and reference_body[0] == ["job_ref"]
    assert ours_body[1:] == reference_body[1:]
