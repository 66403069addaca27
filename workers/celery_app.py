"""The Celery app workers run. Settings come from app.queue so client and worker agree."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

from billiard.process import active_children
from celery import bootsteps
from celery.signals import (
    setup_logging,
    worker_init,
    worker_process_init,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)
from kombu import Queue

from app.db import get_engine, reset_engine
from app.logs import configure_logging
from app.queue import QUEUES, make_celery
from app.services.reaper import ReaperThread
from app.settings import get_settings
from workers.lease import enter_pool_child
from workers.webhooks import WebhookThread

celery = make_celery("tuneq", get_settings(), include=["workers.tasks"])
celery.conf.task_queues = [Queue(name) for name in QUEUES]
# Remote control stays on, on purpose. Its broadcast subscription is also what makes a worker whose prefetch is
# full (every slot running a job, so it polls no queue) notice that Redis went away and reconnect; without it
# such a worker never sees the broker restart (tests/integration/test_broker.py). Whoever can write to Redis can
# therefore send control commands (e.g. shutdown), so Redis is never published and Flower, which relays them,
# listens on loopback behind basic auth (docker-compose.yml).
celery.conf.worker_enable_remote_control = True

HEALTH_TOUCH_SECONDS = 5.0


class HealthFile(bootsteps.StartStopStep):
    """Touch TUNEQ_WORKER_HEALTH_FILE from the consumer's event loop, so a fresh file means the worker's main
    process is alive and serving its queues; a container healthcheck checks its age (docker-compose.yml)."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.path: Path | None = get_settings().worker_health_file
        self.timer_ref: Any = None

    def _touch(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()

    def start(self, parent: Any) -> None:
        if self.path is not None:
            self._touch()
            self.timer_ref = parent.timer.call_repeatedly(HEALTH_TOUCH_SECONDS, self._touch)

    def stop(self, parent: Any) -> None:
        if self.timer_ref is not None:
            self.timer_ref.cancel()
            self.timer_ref = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)  # a stopping worker is no longer healthy


celery.steps["consumer"].add(HealthFile)


@setup_logging.connect
def _logging(loglevel: str | int | None = None, **_: Any) -> None:
    # Connected, so Celery leaves logging to us: JSON lines with the job's context (app/logs.py).
    configure_logging(get_settings(), level=loglevel or None)


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
_webhooks: WebhookThread | None = None


@worker_ready.connect
def _start_reaper(**_: Any) -> None:
    # In the worker's main process (pool children are forked earlier and do not inherit threads): the reaper
    # must run even when no API process does (docs/architecture.md, "Reaper").
    global _reaper, _webhooks
    settings = get_settings()
    if settings.run_reaper and _reaper is None:
        _reaper = ReaperThread(settings)
        _reaper.start()
    if settings.webhook_secret is not None and _webhooks is None:  # the webhook outbox's sender
        _webhooks = WebhookThread(settings)
        _webhooks.start()


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
    if _webhooks is not None:
        _webhooks.stopping.set()


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
