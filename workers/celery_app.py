"""The Celery app workers run. Settings come from app.queue so client and worker agree."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from billiard.process import active_children
from celery.signals import (
    worker_init,
    worker_process_init,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)
from kombu import Queue

from app.db import get_engine, reset_engine
from app.queue import QUEUES, make_celery
from app.services.reaper import ReaperThread
from app.settings import get_settings
from workers.lease import enter_pool_child

celery = make_celery("tuneq", get_settings(), include=["workers.tasks"])
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
    enter_pool_child()


_reaper: ReaperThread | None = None


@worker_ready.connect
def _start_reaper(**_: Any) -> None:
    # In the worker's main process (pool children are forked earlier and do not inherit threads): the reaper
    # must run even when no API process does (docs/architecture.md, "Reaper").
    global _reaper
    settings = get_settings()
    if settings.run_reaper and _reaper is None:
        _reaper = ReaperThread(settings)
        _reaper.start()


@worker_shutting_down.connect
def _drain_pool(**_: Any) -> None:
    # Warm shutdown (SIGTERM: a deploy, `docker stop`): ask every pool process to checkpoint its job and hand
    # it back now, rather than run it to the end or be killed mid-step when the grace period runs out.
    for child in active_children():
        try:
            os.kill(child.pid, signal.SIGUSR2)
        except (ProcessLookupError, TypeError):
            pass
    if _reaper is not None:
        _reaper.stopping.set()


_cold_shutdown_timer: threading.Timer | None = None


@worker_shutting_down.connect
def _bound_warm_shutdown(how: str = "", **_: Any) -> None:
    # A warm shutdown (SIGTERM) waits for running jobs without limit. After the grace period, escalate to
    # Celery's cold shutdown (SIGQUIT): it cancels what still runs and gives those tasks' unacknowledged messages
    # back to the broker before exiting, instead of being SIGKILLed by the supervisor with nothing handed back.
    global _cold_shutdown_timer
    if how != "Warm" or _cold_shutdown_timer is not None:
        return
    grace = get_settings().shutdown_grace_seconds
    _cold_shutdown_timer = threading.Timer(grace, os.kill, (os.getpid(), signal.SIGQUIT))
    _cold_shutdown_timer.daemon = True
    _cold_shutdown_timer.start()


@worker_shutdown.connect
def _warm_shutdown_done(**_: Any) -> None:
    if _cold_shutdown_timer is not None:  # every job ended in time: nothing to escalate
        _cold_shutdown_timer.cancel()
