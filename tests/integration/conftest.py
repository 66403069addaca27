"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.openrouter_server import FakeOpenRouter


@pytest.fixture
def fake(fake_openrouter: FakeOpenRouter) -> Iterator[FakeOpenRouter]:
    """The session's fake OpenRouter with its switches (latency, faults, replies) reset before and after."""
    fake_openrouter.reset(switches=True)
    yield fake_openrouter
    fake_openrouter.reset(switches=True)
