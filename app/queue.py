"""Wake-ups: the API and the reaper tell a worker "drive job J" by task name, and never import workers.

On a Redis broker a wake-up is one LPUSH of a standard Celery message: protocol 2, built by Celery's own
`amqp.as_task_v2`, inside kombu's Redis envelope. Celery's `send_task` spends ~0.6 ms of CPU per message here
(producer pool, queue declaration, a new redis client per publish), a fifth of a whole POST /v1/jobs; the
LPUSH costs ~0.1 ms. tests/test_queue.py checks the envelope against the one kombu writes. Other brokers go
through `send_task`.
"""

from __future__ import annotations

import base64
import logging
import os
import socket
import threading
import uuid
from typing import Any

import orjson
import redis
from celery import Celery

from app.settings import Settings, get_settings

log = logging.getLogger(__name__)

RUN_JOB = "tuneq.run_job"
QUEUES = ("dataset", "generation", "training", "evaluation", "test")


def celery_config(settings: Settings) -> dict[str, Any]:
    """Settings shared by the API's client and the workers (DESIGN.md §2)."""
    return {
        "broker_url": settings.resolved_broker_url,
        "task_ignore_result": True,  # the job row is the only progress channel
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "broker_connection_retry_on_startup": True,
        # Redis redelivers unacked messages after this; our leases recover long before that.
        "broker_transport_options": {
            "visibility_timeout": 6 * 3600,
            "socket_connect_timeout": 3,
            "socket_timeout": 5,
        },
        "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0, "interval_step": 0.2},
        "task_default_queue": "test",
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
    }


def redis_py_url(broker_url: str) -> str | None:
    """The redis-py URL for a kombu Redis broker URL; None for other brokers."""
    if broker_url.startswith("redis+socket://"):
        return "unix://" + broker_url.removeprefix("redis+socket://")
    if broker_url.startswith(("redis://", "rediss://")):
        return broker_url
    return None


class WakeupSender:
    """Publishes `tuneq.run_job(job_id)` to the queue named after the job's kind. Thread-safe."""

    def __init__(self, settings: Settings) -> None:
        self.celery = Celery("tuneq-api")
        self.celery.conf.update(celery_config(settings))
        self._origin = f"gen{os.getpid()}@{socket.gethostname()}"  # what Celery's anon_nodename() gives
        url = redis_py_url(settings.resolved_broker_url)
        timeouts = self.celery.conf.broker_transport_options
        self._redis = None if url is None else redis.Redis.from_url(
            url, socket_connect_timeout=timeouts["socket_connect_timeout"],
            socket_timeout=timeouts["socket_timeout"], retry_on_timeout=True,
        )

    def envelope(self, job_id: str, queue: str) -> dict[str, Any]:
        """The message as kombu's Redis transport stores it (see kombu.transport.virtual.Channel)."""
        task_id = str(uuid.uuid4())
        message = self.celery.amqp.as_task_v2(task_id, RUN_JOB, args=[job_id], argsrepr=repr([job_id]),
                                              kwargsrepr="{}", origin=self._origin)
        return {
            "body": base64.b64encode(orjson.dumps(message.body)).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": message.headers,
            "properties": {
                **message.properties,
                "delivery_mode": 2,  # persistent
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }

    def send(self, job_id: str, queue: str) -> None:
        if self._redis is None:
            self.celery.send_task(RUN_JOB, args=[job_id], queue=queue)
            return
        # The anonymous exchange routes to the list named after the queue (priority 0 has no suffix).
        self._redis.lpush(queue, orjson.dumps(self.envelope(job_id, queue)))

    def ping(self) -> None:
        """Raises when the broker does not answer."""
        if self._redis is None:
            with self.celery.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
        else:
            self._redis.ping()


_sender: WakeupSender | None = None
_sender_lock = threading.Lock()


def get_sender() -> WakeupSender:
    global _sender
    if _sender is None:
        with _sender_lock:
            if _sender is None:
                _sender = WakeupSender(get_settings())
    return _sender


def reset_sender() -> None:
    global _sender
    _sender = None


def enqueue(job_id: str, kind: str) -> bool:
    """Send the wake-up. A failure is logged, not raised: the reaper sends it again later."""
    try:
        get_sender().send(job_id, kind)
        return True
    except Exception as exc:  # broker down: the job row is the outbox, nothing is lost
        log.warning("enqueue of %s failed (%s); the reaper will retry", job_id, type(exc).__name__)
        return False
