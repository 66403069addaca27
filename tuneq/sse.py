"""Reading a text/event-stream body: just enough of the SSE format for the service's job streams."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any


def parse_events(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Each complete event's JSON `data`, in order; comments (pings) and partial events are skipped."""
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield json.loads("\n".join(data))
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    # an event without its closing blank line was cut off by a dropped connection: the resume replays it
