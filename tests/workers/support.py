"""Helpers shared by the worker-side tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from workers.sources import SourceError


def source_error(rows: Iterator[object]) -> SourceError:
    """The SourceError that reading `rows` to the end raises (the test fails if none does)."""
    with pytest.raises(SourceError) as info:
        for _ in rows:
            pass
    return info.value
