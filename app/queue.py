"""A config-only Celery client: the API sends "drive job J" by task name and never imports workers."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from app.settings import Settings, get_settings

log = logging.getLogger(__name__)

RUN_JOB = "tuneq.run_job"
QUEUES = ("dataset", "generation", "training", "evaluation", "test")

_client: Celery | None = None


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


def get_client() -> Celery:
    global _client
    if _client is None:
        _client = Celery("tuneq-api")
        _client.conf.update(celery_config(get_settings()))
    return _client


def reset_client() -> None:
    global _client
    _client = None


def enqueue(job_id: str, kind: str) -> bool:
    """Send the wake-up. A failure is logged, not raised: the reaper sends it again later."""
    try:
        get_client().send_task(RUN_JOB, args=[job_id], queue=kind)
        return True
    except Exception as exc:  # broker down: the job row is the outbox, nothing is lost
        log.warning("enqueue of %s failed (%s); the reaper will retry", job_id, type(exc).__name__)
        return False
