"""A pipeline that only exercises the machinery: steps that sleep, report progress, maybe fail."""

from __future__ import annotations

import time
from typing import Any

from workers.errors import JobFailed
from workers.lease import JobContext


def run(spec: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    steps, pause = spec.get("steps", 1), spec.get("step_seconds", 0.0)
    for step in range(1, steps + 1):
        if pause:
            time.sleep(pause)
        ctx.progress(step, steps, "steps", event=True)
    if spec.get("fail_with"):
        raise JobFailed("test_failure", spec["fail_with"])
    return {"steps": steps, "attempt": ctx.attempt}
