"""The pipeline registry: job kind → a plain function of (spec, ctx) returning the job result."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from workers.lease import JobContext
from workers.pipelines import dataset, evaluation, export, generation, test_job, training

Pipeline = Callable[[dict[str, Any], JobContext], dict[str, Any]]

PIPELINES: dict[str, Pipeline] = {
    "dataset": dataset.run,
    "evaluation": evaluation.run,
    "export": export.run,
    "generation": generation.run,
    "test": test_job.run,
    "training": training.run,
}
