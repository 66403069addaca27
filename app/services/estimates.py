"""What a job would do, before it runs: examples, tokens, steps, cost and duration (docs/architecture.md,
"Estimates"). Used by dry runs and recorded on every created job."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.services.auth import Caller
from app.settings import Settings


def estimate(session: Session, caller: Caller, kind: str, spec: Any, settings: Settings) -> dict[str, Any] | None:
    """The estimate for a validated spec (fields holding an OutputRef are not known yet), or None."""
    return None
