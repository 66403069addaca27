"""The one place a Tinker ``ServiceClient`` comes from, for the API (chat) and the workers alike
(docs/tinker-sdk-notes.md; docs/architecture.md, "Parts": it sits in app/ because the API's chat needs it too).

``make_service_client(settings)`` builds a ``tinker.ServiceClient``. Call it where the client is used, never at
import time: the SDK runs all its I/O on one process-global event-loop thread, and that thread does not survive
``fork`` (a Celery prefork child would inherit a dead loop and hang). Building a ``ServiceClient`` does no I/O;
the first ``create_*`` call opens the session.

Test seam, and the only override mechanism:

* in-process: ``use_fake(factory)`` (plain call, or ``with use_fake(factory): ...``) makes
  ``make_service_client`` return ``factory()``; ``use_fake(None)`` removes the override;
* another process (a Celery worker or an API started by a test): the setting ``tinker_fake`` names an
  importable factory as ``"package.module:callable"`` and ``tinker_fake_config`` holds a JSON object; the
  callable is called with the parsed object (or ``None``) and must return the client, e.g.
  ``tests.fakes.tinker_fake:make_fake_service_client``.

The API key is never logged, never put in an exception message, never in a repr.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

import tinker

log = logging.getLogger(__name__)

__all__ = ["NotConfigured", "configured", "make_service_client", "use_fake"]


class NotConfigured(Exception):
    """Tinker cannot be used from this process: no API key (or a malformed one, or a broken fake) in the
    settings. The workers turn it into a job error, the API into a 503."""


_override: Callable[[], Any] | None = None
_override_lock = threading.Lock()


class _OverrideToken:
    """What ``use_fake`` returns: ignore it, or use it as a context manager to restore the previous factory."""

    def __init__(self, previous: Callable[[], Any] | None) -> None:
        self._previous = previous

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        global _override
        with _override_lock:
            _override = self._previous


def use_fake(factory: Callable[[], Any] | None) -> _OverrideToken:
    """Make ``make_service_client`` return ``factory()`` in this process (``None`` removes the override).

    ``with use_fake(f): ...`` restores whatever was installed before when the block ends.
    """
    global _override
    with _override_lock:
        previous, _override = _override, factory
    return _OverrideToken(previous)


def configured(settings: Any) -> bool:
    """Whether this process could build a client at all (an override, a fake, or an API key), without
    building one: a cheap check before work that needs Tinker."""
    with _override_lock:
        if _override is not None:
            return True
    return bool(getattr(settings, "tinker_fake", None)) or _secret(getattr(settings, "tinker_api_key", None)) is not None


def _load_factory(spec: str) -> Callable[..., Any]:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise NotConfigured(f"The tinker_fake setting must look like 'package.module:callable', got {spec!r}.")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise NotConfigured(f"The tinker_fake factory {spec!r} cannot be imported: {exc}") from exc
    if not callable(target):
        raise NotConfigured(f"The tinker_fake factory {spec!r} is not callable.")
    return target  # type: ignore[no-any-return]


def _fake_config(raw: Any) -> dict[str, Any] | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw)
    except (TypeError, ValueError) as exc:
        raise NotConfigured(f"The tinker_fake_config setting is not valid JSON: {exc}") from exc
    if value is not None and not isinstance(value, dict):
        raise NotConfigured("The tinker_fake_config setting must be a JSON object.")
    return value


def _secret(value: Any) -> str | None:
    if value is None:
        return None
    getter = getattr(value, "get_secret_value", None)
    text = getter() if callable(getter) else value
    return str(text).strip() or None


def make_service_client(settings: Any) -> tinker.ServiceClient:
    """A ``tinker.ServiceClient`` for this process; call it where it is used, never at import time.

    Order: the ``use_fake`` override; else the ``tinker_fake`` setting (factory spec, see the module doc);
    else the real client from ``settings.tinker_api_key`` and the optional ``settings.tinker_base_url``
    (``None`` lets the SDK use its production URL). Raises ``NotConfigured`` when the key is missing or malformed.
    """
    _reset_sdk_loop_if_forked()
    with _override_lock:
        factory = _override
    if factory is not None:
        return factory()  # type: ignore[no-any-return]

    fake_spec = getattr(settings, "tinker_fake", None)
    if fake_spec:
        config = _fake_config(getattr(settings, "tinker_fake_config", None))
        return _load_factory(str(fake_spec))(config)  # type: ignore[no-any-return]

    api_key = _secret(getattr(settings, "tinker_api_key", None))
    if api_key is None:
        raise NotConfigured("Tinker is not configured: set TINKER_API_KEY (keys start with 'tml-').")
    if not (api_key.startswith("tml-") or api_key.startswith("eyJ")):
        raise NotConfigured("The configured TINKER_API_KEY is malformed: Tinker keys start with 'tml-'.")
    base_url = getattr(settings, "tinker_base_url", None) or None
    return tinker.ServiceClient(api_key=api_key, base_url=str(base_url) if base_url else None)


# The SDK keeps its I/O loop, and caches of holders bound to that loop, in module globals. A process forked after
# the loop started (a Celery prefork child of a parent that used Tinker) inherits a loop whose thread is gone, and
# every request would hang. After fork only the forking thread is alive, so a started loop whose thread is not
# alive means we are in such a child: give it fresh globals before it builds a client.
def _reset_sdk_loop_if_forked() -> None:
    try:
        from tinker.lib import internal_client_holder as ich
    except ImportError:  # pragma: no cover - a future SDK layout: nothing we know how to reset
        return
    singleton = getattr(ich, "_internal_client_holder_thread_singleton", None)
    thread = getattr(singleton, "_thread", None)
    if not getattr(singleton, "_started", False) or thread is None or thread.is_alive():
        return
    log.warning("tinker SDK event loop was inherited across fork; starting a fresh one in pid %s", os.getpid())
    for name in ("_internal_client_holder_thread_singleton", "_shadow_holder_singleton",
                 "sessionless_holder_cache"):
        current = getattr(ich, name, None)
        if current is not None:
            with contextlib.suppress(Exception):
                setattr(ich, name, type(current)())
    with contextlib.suppress(Exception):
        from tinker.lib.public_interfaces import training_client as tc_module

        tc_module._custom_loss_loop = None
