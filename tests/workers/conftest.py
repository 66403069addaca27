"""Fixtures shared by the worker-side tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.openrouter_server import FakeOpenRouter


@pytest.fixture(scope="module")
def _seeded_server() -> Iterator[FakeOpenRouter]:
    with FakeOpenRouter(seed=7) as fake:
        yield fake


@pytest.fixture
def seeded_openrouter(_seeded_server: FakeOpenRouter) -> FakeOpenRouter:
    """The loopback fake OpenRouter with fixed replies (seed 7), its switches reset for each test."""
    _seeded_server.reset(switches=True)
    return _seeded_server
