"""The webhook sweep (docs/architecture.md, "Webhooks"): sends the outbox's due deliveries, signed with the
Standard Webhooks scheme, from a thread in each worker's main process.

A delivery is claimed with a compare-and-set on (status, attempts, next_attempt_at) that also pushes
`next_attempt_at` past the send's timeout, so two workers never send one delivery at once and one whose sender
died is sent again later (receivers dedupe on `webhook-id`, the delivery's id). A 2xx marks it delivered;
anything else is retried after TUNEQ_WEBHOOK_RETRY_BASE_SECONDS × 2^(attempt−1) (± 25 %, at most
TUNEQ_WEBHOOK_RETRY_MAX_SECONDS) until TUNEQ_WEBHOOK_MAX_ATTEMPTS, then marked failed. A URL whose host now
resolves to a refused address fails at once. Errors recorded on the row never hold the URL or the address.
"""

from __future__ import annotations

import logging
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from sqlalchemy import Float, Update, bindparam, func, select, update
from standardwebhooks.webhooks import Webhook

from app.db import session_scope
from app.models import Job, Pipeline, WebhookDelivery, db_now, utcnow
from app.services import webhook_targets
from app.services.webhook_targets import AddressPolicy, Resolver, TargetRefused, TargetUnresolved
from app.settings import Settings

log = logging.getLogger("tuneq.webhooks")
USER_AGENT = "tuneq-webhooks/1"
SENDERS = 8  # concurrent POSTs per worker process


@dataclass(frozen=True)
class Claimed:
    id: str
    attempts: int
    event_type: str
    payload: dict[str, Any]
    created_at: datetime
    url: str | None


def _set(values: dict[str, Any]) -> Update:
    return (update(WebhookDelivery)
            .where(WebhookDelivery.id == bindparam("d_id"), WebhookDelivery.status == "pending",
                   WebhookDelivery.attempts == bindparam("d_attempts"))
            .values(**values))


def claim_due(settings: Settings, limit: int) -> list[Claimed]:
    """Take up to `limit` due deliveries for this sender (each its own compare-and-set)."""
    # Longer than a send can take (DNS, then httpx's per-phase timeouts): past it, a sender is presumed dead
    # and the delivery is due again.
    lease = 5 * settings.webhook_timeout_seconds + 30
    claimed: list[Claimed] = []
    with session_scope() as session:
        due = session.execute(
            select(WebhookDelivery.id, WebhookDelivery.attempts)
            .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= db_now())
            .order_by(WebhookDelivery.next_attempt_at).limit(limit)).all()
        url = func.coalesce(select(Job.webhook_url).where(Job.id == WebhookDelivery.job_id).scalar_subquery(),
                            select(Pipeline.webhook_url).where(Pipeline.id == WebhookDelivery.pipeline_id)
                            .scalar_subquery())
        for item in due:
            row = session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == item.id, WebhookDelivery.status == "pending",
                       WebhookDelivery.attempts == item.attempts, WebhookDelivery.next_attempt_at <= db_now())
                .values(attempts=WebhookDelivery.attempts + 1, next_attempt_at=db_now(lease),
                        last_attempt_at=utcnow())
                .returning(WebhookDelivery.id, WebhookDelivery.attempts, WebhookDelivery.event_type,
                           WebhookDelivery.payload, WebhookDelivery.created_at, url.label("url"))).first()
            if row is not None:
                claimed.append(Claimed(row.id, row.attempts, row.event_type, row.payload, row.created_at, row.url))
            session.commit()  # each claim on its own: a sender never holds many row locks
    return claimed


def body(delivery: Claimed) -> bytes:
    return orjson.dumps({"type": delivery.event_type, "timestamp": delivery.created_at.isoformat(),
                         "data": delivery.payload})


def send(delivery: Claimed, settings: Settings, resolver: Resolver | None = None) -> tuple[int | None, str | None]:
    """POST one delivery: (status code or None, None if it was delivered else why not). TargetRefused propagates."""
    assert settings.webhook_secret is not None
    if delivery.url is None:
        raise TargetRefused("its job or pipeline no longer exists")
    webhook_targets.target(delivery.url)  # scheme, host, no credentials
    data = body(delivery).decode()
    now = datetime.now(UTC)
    signature = Webhook(settings.webhook_secret.get_secret_value()).sign(delivery.id, now, data)
    headers = {"webhook-id": delivery.id, "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": signature, "content-type": "application/json", "user-agent": USER_AGENT}
    transport = webhook_targets.PinnedTransport(
        AddressPolicy(settings), resolver or webhook_targets.system_resolver(settings.webhook_timeout_seconds))
    try:
        with httpx.Client(transport=transport, timeout=settings.webhook_timeout_seconds, follow_redirects=False,
                          trust_env=False) as client:
            response = client.post(delivery.url, content=data.encode(), headers=headers)
    except TargetUnresolved as exc:
        return None, str(exc)
    except httpx.TimeoutException:
        return None, f"no answer within {settings.webhook_timeout_seconds:g} s"
    except httpx.HTTPError as exc:
        return None, f"could not connect ({type(exc).__name__})"
    if 200 <= response.status_code < 300:
        return response.status_code, None
    return response.status_code, f"the receiver answered HTTP {response.status_code}"


def backoff(settings: Settings, attempts: int) -> float:
    delay = min(settings.webhook_retry_max_seconds, settings.webhook_retry_base_seconds * 2 ** max(0, attempts - 1))
    return delay * random.uniform(0.75, 1.25)


def record(delivery: Claimed, settings: Settings, code: int | None, error: str | None, *,
           final: bool = False) -> str:
    """Write the outcome of the claimed attempt; returns the delivery's new status."""
    params = {"d_id": delivery.id, "d_attempts": delivery.attempts}
    if error is None:
        values: dict[str, Any] = {"status": "delivered", "delivered_at": utcnow(), "last_status_code": code,
                                  "last_error": None, "next_attempt_at": None}
    elif final or delivery.attempts >= settings.webhook_max_attempts:
        values = {"status": "failed", "last_status_code": code, "last_error": error[:500], "next_attempt_at": None}
    else:
        values = {"last_status_code": code, "last_error": error[:500],
                  "next_attempt_at": db_now(bindparam("d_delay", type_=Float))}
        params["d_delay"] = backoff(settings, delivery.attempts)
    with session_scope() as session:
        session.execute(_set(values), params)
    return str(values.get("status", "pending"))


def deliver(delivery: Claimed, settings: Settings, resolver: Resolver | None = None) -> str:
    """Send one claimed delivery and record how it went; returns its new status."""
    try:
        code, error = send(delivery, settings, resolver)
        final = False
    except TargetRefused as exc:
        code, error, final = None, f"refused: {exc}", True
    except Exception as exc:  # e.g. a TUNEQ_WEBHOOK_SECRET that is not base64: retried, then failed
        log.exception("webhook %s: the sender failed", delivery.id)
        code, error, final = None, f"the sender failed unexpectedly ({type(exc).__name__})", False
    status = record(delivery, settings, code, error, final=final)
    log.info("webhook %s (%s) attempt %d: %s%s", delivery.id, delivery.event_type, delivery.attempts, status,
             f" ({error})" if error else "")
    return status


def run_pass(settings: Settings, resolver: Resolver | None = None) -> int:
    """Send up to SENDERS due deliveries at once (a slow receiver does not hold up the others); returns how
    many were sent (delivered or not). The thread runs passes back to back while they find work."""
    deliveries = claim_due(settings, limit=SENDERS)  # one round of sends, well within the claims' lease
    if deliveries:
        with ThreadPoolExecutor(max_workers=min(SENDERS, len(deliveries)), thread_name_prefix="webhook") as pool:
            list(pool.map(lambda d: deliver(d, settings, resolver), deliveries))
    return len(deliveries)


class WebhookThread(threading.Thread):
    """Runs passes every TUNEQ_WEBHOOK_INTERVAL_SECONDS until stopped."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="tuneq-webhooks", daemon=True)
        self.settings = settings
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.settings.webhook_interval_seconds):
            try:
                while run_pass(self.settings) and not self.stopping.is_set():
                    pass  # more may be due
            except Exception as exc:
                log.warning("webhook pass failed (%s); trying again next interval", type(exc).__name__)
