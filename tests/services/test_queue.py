"""Wake-ups go through Celery's send_task and kombu's producer (app/queue.py): what a consumer of the broker sees.

These read the broker with a plain kombu consumer on queues no worker serves; tests/integration/test_broker.py
runs the same wake-ups through real workers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection
from kombu import Queue as KombuQueue

from app import queue
from app.queue import PRIORITY_NEW, PRIORITY_RESUMED, RUN_JOB, WakeupSender
from app.settings import get_settings
from tests.support import free_port


def _redis(url: str) -> redis.Redis:
    if url.startswith("redis+socket://"):
        return redis.Redis(unix_socket_path=url.removeprefix("redis+socket://"))
    return redis.Redis.from_url(url)


def _sender(**celery_options: Any) -> WakeupSender:
    return WakeupSender(get_settings().model_copy(update={"celery_options": celery_options}))


@pytest.fixture
def kind(backend: dict[str, str]) -> Iterator[str]:
    """A job kind whose queue no worker consumes; its lists are deleted afterwards."""
    name = f"unserved-{uuid.uuid4().hex[:8]}"
    yield name
    r = _redis(backend["TUNEQ_BROKER_URL"])
    for key in r.scan_iter(f"*{name}*"):
        r.delete(key)


def _take_all(url: str, name: str, **transport_options: Any) -> list[Any]:
    """Every message waiting in queue `name`, in delivery order, removed from the broker."""
    taken = []
    with Connection(url, transport_options=transport_options) as conn:
        bound = KombuQueue(name).bind(conn.default_channel)
        while (message := bound.get(no_ack=True)) is not None:
            taken.append(message)
    return taken


def test_a_wakeup_is_a_celery_task_message_for_the_job(backend: dict[str, str], kind: str) -> None:
    assert queue.enqueue("job_abc", kind) is True

    [message] = _take_all(backend["TUNEQ_BROKER_URL"], kind)
    assert message.headers["task"] == RUN_JOB
    args, kwargs, _ = message.decode()
    assert args == ["job_abc"] and kwargs == {}  # ids only, no payload
    assert message.content_type == "application/json"
    assert message.headers["ignore_result"] is True  # as the task itself declares
    assert message.properties["priority"] == PRIORITY_NEW


def test_a_resumed_job_is_delivered_before_jobs_that_never_started(backend: dict[str, str], kind: str) -> None:
    for job_id in ("job_new1", "job_new2", "job_new3"):
        assert queue.enqueue(job_id, kind)
    assert queue.enqueue("job_handed_back", kind, resumed=True)

    order = [m.decode()[0][0] for m in _take_all(backend["TUNEQ_BROKER_URL"], kind)]
    assert order == ["job_handed_back", "job_new1", "job_new2", "job_new3"]
    assert PRIORITY_RESUMED < PRIORITY_NEW  # on Redis the lower number is served first


def test_waiting_messages_counts_the_wakeups_of_every_priority(backend: dict[str, str], kind: str) -> None:
    assert queue.waiting_messages(kind) == 0  # nothing was ever sent there
    queue.enqueue("job_1", kind)
    queue.enqueue("job_2", kind)
    queue.enqueue("job_3", kind, resumed=True)
    assert queue.waiting_messages(kind) == 3

    _take_all(backend["TUNEQ_BROKER_URL"], kind)
    assert queue.waiting_messages(kind) == 0


def test_an_operators_key_prefix_applies_to_wakeups_and_their_count(backend: dict[str, str], kind: str) -> None:
    prefix = f"shared-{uuid.uuid4().hex[:6]}:"
    prefixed = _sender(broker_transport_options={"global_keyprefix": prefix})
    prefixed.send("job_p1", kind)
    prefixed.send("job_p2", kind, resumed=True)

    assert prefixed.waiting(kind) == 2
    assert queue.waiting_messages(kind) == 0  # an unprefixed client sees nothing under the plain name
    r = _redis(backend["TUNEQ_BROKER_URL"])
    assert any(k.startswith(prefix.encode()) for k in r.scan_iter(f"{prefix}{kind}*"))
    assert not r.exists(kind)
    taken = _take_all(backend["TUNEQ_BROKER_URL"], kind, global_keyprefix=prefix)
    assert [m.decode()[0][0] for m in taken] == ["job_p2", "job_p1"]
    # our own timeouts still apply: the operator's options are merged into ours, not swapped for them
    assert prefixed.celery.conf.broker_transport_options["visibility_timeout"] == 6 * 3600


def test_an_operators_task_route_decides_where_wakeups_go(backend: dict[str, str], kind: str) -> None:
    routed = f"{kind}-routed"
    sender = _sender(task_routes={RUN_JOB: {"queue": routed}})
    sender.send("job_r1", "training")

    assert sender.queue_name("training") == routed
    assert sender.waiting("training") == 1  # counted where the wake-ups of that kind actually go
    [message] = _take_all(backend["TUNEQ_BROKER_URL"], routed)
    assert message.decode()[0] == ["job_r1"]
    assert _take_all(backend["TUNEQ_BROKER_URL"], "training") == []


def test_broker_instance_is_the_servers_run_id(backend: dict[str, str]) -> None:
    run_id = _redis(backend["TUNEQ_BROKER_URL"]).info("server")["run_id"]
    assert queue.broker_instance() == run_id


def test_an_unreachable_broker_is_reported_not_raised(backend: dict[str, str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    down = get_settings().model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    monkeypatch.setattr(queue, "_sender", WakeupSender(down))

    assert queue.enqueue("job_x", "test") is False  # the job row is the outbox; the reaper sends it later
    assert queue.waiting_messages("test") is None
    assert queue.broker_instance() is None
