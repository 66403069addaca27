"""Typed SQLAlchemy models, one table per module."""

from app.models.api_key import ApiKey
from app.models.artifact import Artifact
from app.models.base import Base, db_now, new_id, row_dict, utcnow
from app.models.checkpoint import Checkpoint
from app.models.eval_sample import EvalSample
from app.models.generation_item import GenerationItem
from app.models.job import ACTIVE_STATUSES, TERMINAL_STATUSES, Job
from app.models.job_dependency import JobDependency
from app.models.job_event import JobEvent
from app.models.lock import Lock
from app.models.metric import Metric
from app.models.pipeline import Pipeline
from app.models.team import Team
from app.models.webhook_delivery import WebhookDelivery

__all__ = [
    "ACTIVE_STATUSES",
    "TERMINAL_STATUSES",
    "ApiKey",
    "Artifact",
    "Base",
    "Checkpoint",
    "EvalSample",
    "GenerationItem",
    "Job",
    "JobDependency",
    "JobEvent",
    "Lock",
    "Metric",
    "Pipeline",
    "Team",
    "WebhookDelivery",
    "db_now",
    "new_id",
    "row_dict",
    "utcnow",
]
