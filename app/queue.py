"""Wake-ups: the API, the reaper and the workers tell a worker "drive job J" by task name, never importing workers.

A wake-up is `tuneq.run_job(job_id)` sent with Celery's own `send_task`, through one long-lived kombu producer
per thread. So whatever an operator configures for Celery — `task_routes`, `broker_transport_options` such as
`global_keyprefix` on a shared Redis, priority steps — applies to a wake-up exactly as to any Celery message,
and the reaper's re-sends go the same way. The job row stays the truth; a wake-up that cannot be sent is logged
and left to the reaper.

Priorities: a job handed back by a lost or stopping worker (or a retry) is sent with `PRIORITY_RESUMED` and is
delivered before every wake-up of a job that never started (`PRIORITY_NEW`). On Redis a *lower* number is served
first: kombu's Redis transport keeps one list per step of `priority_steps` (default 0, 3, 6, 9) and a worker's
BRPOP names them in ascending order (kombu/transport/redis.py, `Channel._q_for_pri`, `Channel._brpop_start`) —
the reverse of AMQP brokers, where 9 is the highest.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Celery
from celery.app.amqp import AMQP
from kombu import Connection, Producer, Queue

from app.settings import Settings, get_settings

log = logging.getLogger(__name__)

RUN_JOB = "tuneq.run_job"
QUEUES = ("dataset", "generation", "training", "evaluation", "export", "test")

PRIORITY_RESUMED = 0  # served first on Redis (see the module docstring)
PRIORITY_NEW = 9  # the last step of any `priority_steps` that ends with 9, as kombu's default does

T = TypeVar("T")


def celery_config(settings: Settings) -> dict[str, Any]:
    """Settings shared by the API's client and the workers (docs/architecture.md, "Wake-ups").

    `celery_options` (a Settings field: any Celery setting, e.g. `task_routes` or `broker_transport_options`)
    is applied last; a dict value is merged one level deep into ours, so an operator can add
    `{"broker_transport_options": {"global_keyprefix": "tuneq:"}}` and keep our timeouts.
    """
    config: dict[str, Any] = {
        "broker_url": settings.resolved_broker_url,
        "task_ignore_result": True,  # the job row is the only progress channel
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # A connection loss must not kill running jobs: the lease and its fencing token already make a
        # redelivered duplicate harmless (its claim matches no row). True would SIGTERM every running job on
        # every Redis restart or failover.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "broker_connection_retry_on_startup": True,
        # Redis redelivers unacked messages after visibility_timeout; our leases recover long before that.
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
    for key, value in settings.celery_options.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


class BrokerConnection(Connection):
    """kombu's Connection, with one guard on the path a worker takes when its Redis broker goes away.

    Celery's consumer then calls `collect()` and `close()` on the broken connection
    (celery/worker/consumer/consumer.py, `on_connection_error_after_connected`). On Redis, `collect()` can leave
    the consuming channel half-closed: `Channel.close()` first reads the reply of the BRPOP in flight, which
    raises on the dead socket before anything is closed, and `collect()` swallows that and detaches the
    transport from this connection (`transport.client = None`). The second `close()` then closes that channel
    again; with a task running under `acks_late` it restores the task's unacknowledged message, which needs a
    new Redis pool whose address it reads from `transport.client`: AttributeError("'NoneType' object has no
    attribute 'hostname'") in kombu's `restore_unacked_once` → `_connparams`. That is no connection error, so
    Celery calls it unrecoverable and the worker shuts down (the ack of that running task, sent through the
    same channel once it finishes, would fail the same way). It happens whenever a Redis restart finds a
    worker running a job with a free process slot: one unacked message and one BRPOP in flight.

    Re-attaching the transport once `collect()` is done lets those late calls reach the broker again (the
    running task's ack then removes its message), or fail with a connection error, which Celery handles.
    tests/integration/test_broker.py (a Redis restart mid-job) fails without this guard.
    """

    def collect(self, socket_timeout: float | None = None) -> None:
        transport = self.transport
        super().collect(socket_timeout)
        transport.client = self


class BrokerAMQP(AMQP):
    """Celery's AMQP helpers with our guarded connection class; pass `amqp=BrokerAMQP` to `Celery()`."""

    Connection = BrokerConnection


def make_celery(name: str, settings: Settings, **kwargs: Any) -> Celery:
    """A Celery app with our connection class and `celery_config(settings)`."""
    app = Celery(name, amqp=BrokerAMQP, **kwargs)
    app.conf.update(celery_config(settings))
    return app


class WakeupSender:
    """Publishes `tuneq.run_job(job_id)` for a job of a given kind. Thread-safe: one producer per thread."""

    def __init__(self, settings: Settings) -> None:
        # Not the process's current app: in a worker process that stays the worker's own.
        self.celery = make_celery("tuneq-api", settings, set_as_current=False)
        self._local = threading.local()
        self._destinations: dict[str, dict[str, Any]] = {}

    def destination(self, kind: str) -> dict[str, Any]:
        """Routing options for a wake-up of a `kind` job: the operator's `task_routes` entry for tuneq.run_job
        if there is one, else the queue named after the kind. Router functions see no job id, and
        `options={"queue": kind}` (the default destination), so they can route by kind."""
        found = self._destinations.get(kind)
        if found is None:
            route = self.celery.amqp.router.lookup_route(RUN_JOB, (), {}, {"queue": kind}, None)
            if isinstance(route, str | Queue):
                route = {"queue": route}
            found = dict(route) if route else {"queue": kind}
            if self._anonymous(found):
                # Published through the anonymous exchange, a message goes straight onto the list named after
                # its queue: nothing needs declaring. (Celery would re-check its declaration cache on every
                # publish, a tenth of the cost of a wake-up.)
                found["declare"] = []
            self._destinations[kind] = found
        return dict(found)

    def _anonymous(self, destination: dict[str, Any]) -> bool:
        """True when Celery sends to this destination through the anonymous exchange (a direct exchange and no
        explicit exchange in the route: celery/app/amqp.py, `send_task_message`)."""
        queue = destination.get("queue")
        if "exchange" in destination or queue is None:
            return False
        if not isinstance(queue, Queue):
            queue = self.celery.amqp.queues[queue]  # a queue missing from task_queues is made as Celery would
        return bool(queue.exchange is None or queue.exchange.type == "direct")

    def queue_name(self, kind: str) -> str | None:
        """The broker queue a `kind` wake-up lands in; None when a route names only an exchange."""
        queue = self.destination(kind).get("queue")
        return queue.name if isinstance(queue, Queue) else queue

    def _producer(self) -> Producer:
        producer: Producer | None = getattr(self._local, "producer", None)
        if producer is None:
            conn = self.celery.connection_for_write()
            # Connect now, failing fast when the broker is down (the default would keep retrying for seconds).
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2)
            producer = self._local.producer = Producer(conn)
        return producer

    def _discard_producer(self) -> None:
        """Forget this thread's producer after a failure: the next call connects afresh. (A kombu connection
        whose reconnect failed keeps a closed channel that cannot be revived.)"""
        producer = getattr(self._local, "producer", None)
        self._local.producer = None
        if producer is not None:
            try:
                producer.connection.collect()
            except Exception:  # only dropping references to a broken connection
                pass

    def send(self, job_id: str, kind: str, *, resumed: bool = False) -> None:
        # After a broker restart the first publish fails on the dead socket; kombu's `ensure` (under
        # `task_publish_retry_policy`) reconnects this thread's connection and publishes again.
        options = self.destination(kind)
        options["priority"] = PRIORITY_RESUMED if resumed else PRIORITY_NEW
        try:
            self.celery.send_task(RUN_JOB, args=[job_id], producer=self._producer(), ignore_result=True,
                                  add_to_parent=False, **options)
        except Exception:
            self._discard_producer()
            raise

    def _on_channel(self, fun: Callable[[Any], T]) -> T:
        """`fun(channel)` on this thread's broker channel, reconnecting once if the broker went away."""
        try:
            producer = self._producer()
            ensured = producer.connection.ensure(producer, lambda: fun(producer.channel), max_retries=1,
                                                 interval_start=0, interval_step=0.2, interval_max=1)
            return ensured()
        except Exception:
            self._discard_producer()
            raise

    def _is_redis(self) -> bool:
        return bool(self._producer().connection.transport.driver_type == "redis")

    def waiting(self, kind: str) -> int | None:
        """Wake-ups waiting in the broker for `kind`'s queue, every priority included."""
        name = self.queue_name(kind)
        if name is None:
            return None

        def count(channel: Any) -> int:
            # Not passive=True: kombu's Redis transport checks a queue's existence with EXISTS, which its
            # global_keyprefix client does not prefix (kombu/transport/redis.py, GlobalKeyPrefixMixin), so a
            # passive declare reports every prefixed queue missing. Declaring a Redis queue writes nothing
            # (no auto_delete, no x-expires); the count is an LLEN of each priority list.
            return int(channel.queue_declare(queue=name).message_count)

        return self._on_channel(count)

    def instance(self) -> str | None:
        """The broker server's run id (Redis `INFO server`), which changes when it restarts; None elsewhere."""
        if not self._is_redis():
            return None

        def run_id(channel: Any) -> str | None:
            with channel.conn_or_acquire() as client:
                value = client.info("server").get("run_id")
            return str(value) if value else None

        return self._on_channel(run_id)

    def ping(self) -> None:
        """Raises when the broker does not answer."""

        def ping(channel: Any) -> None:
            if self._is_redis():
                with channel.conn_or_acquire() as client:
                    client.ping()

        self._on_channel(ping)


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


def _after_fork_in_child() -> None:
    # A forked process (a worker's pool child) must not publish through its parent's sockets, nor wait on a
    # lock another thread of the parent held at the fork.
    global _sender, _sender_lock
    _sender, _sender_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def enqueue(job_id: str, kind: str, *, resumed: bool = False) -> bool:
    """Send the wake-up of job `job_id` to the queue of its kind. `resumed=True` (a job handed back by a lost or
    stopping worker, or a retry) is delivered before the wake-ups of jobs that never started.

    A failure is logged, not raised (returns False): the job row is the outbox and the reaper sends it again.
    """
    try:
        get_sender().send(job_id, kind, resumed=resumed)
        return True
    except Exception as exc:  # broker down: nothing is lost
        log.warning("enqueue of %s failed (%s); the reaper will retry", job_id, type(exc).__name__)
        return False


def waiting_messages(kind: str) -> int | None:
    """How many wake-ups wait in the broker for `kind`'s queue (all priorities, key prefix honoured); None when
    the broker cannot be asked."""
    try:
        return get_sender().waiting(kind)
    except Exception as exc:
        log.info("could not count the wake-ups waiting for %s (%s)", kind, type(exc).__name__)
        return None


def broker_instance() -> str | None:
    """An id that changes when the broker restarts (Redis `run_id`); None when unknown or unreachable."""
    try:
        return get_sender().instance()
    except Exception as exc:
        log.info("could not identify the broker (%s)", type(exc).__name__)
        return None
