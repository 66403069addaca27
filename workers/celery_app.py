"""The Celery app workers run. Settings come from app.queue so client and worker agree."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_process_init
from kombu import Queue

from app.db import get_engine, reset_engine
from app.queue import QUEUES, celery_config
from app.settings import get_settings

celery = Celery("tuneq", include=["workers.tasks"])
celery.conf.update(celery_config(get_settings()))
celery.conf.task_queues = [Queue(name) for name in QUEUES]


@worker_init.connect
def _load_sql_driver(**_: Any) -> None:
    # Build the engine (no connection yet) in the parent, so the children inherit the imported SQL driver
    # instead of importing it during their first job.
    get_engine()


@worker_process_init.connect
def _fresh_process(**_: Any) -> None:
    # A forked child must not reuse the parent's SQL connections.
    reset_engine()
