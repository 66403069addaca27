"""A bare Celery app with the workers' settings and one no-op task, the baseline for bench/dispatch.py."""

from __future__ import annotations

import redis
from celery import Celery

from app.queue import celery_config
from app.settings import get_settings

settings = get_settings()
noop_app = Celery("noop")
noop_app.conf.update(celery_config(settings))
_counter = redis.Redis.from_url(settings.resolved_broker_url)


@noop_app.task(name="bench.noop", ignore_result=True)
def noop() -> None:
    _counter.incr("bench:noop:done")
