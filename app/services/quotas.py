"""Per-team quotas checked when a job is submitted (rate limits per request are in app/services/ratelimit.py).

A team's own values live in `team.limits` (JSON); a missing entry means the server's setting:
- "generation_max_cost_usd": the most the team's unfinished generation jobs may budget together
  (TUNEQ_GENERATION_TEAM_MAX_COST_USD);
- "upload_bytes": storage for the team's uploads (checked by the upload route).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.errors import InvalidRequest
from app.models import Job, Team
from app.settings import Settings

UNFINISHED = ("pending", "queued", "running")


def team_limits(session: Session, team_id: str) -> dict[str, Any]:
    return session.scalar(select(Team.limits).where(Team.id == team_id)) or {}


def budget_generation(session: Session, team_id: str, spec: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Give the spec the server's default `max_cost_usd` if it has none, and refuse it when the team's
    unfinished generation jobs would together budget more than the team's cap."""
    if spec.get("max_cost_usd") is None and settings.generation_default_max_cost_usd is not None:
        spec = {**spec, "max_cost_usd": settings.generation_default_max_cost_usd}
    cap = team_limits(session, team_id).get("generation_max_cost_usd", settings.generation_team_max_cost_usd)
    if cap is None:
        return spec
    in_use = session.scalar(select(func.coalesce(func.sum(Job.spec["max_cost_usd"].as_float()), 0.0)).where(
        Job.team_id == team_id, Job.kind == "generation", Job.status.in_(UNFINISHED))) or 0.0
    asked = float(spec.get("max_cost_usd") or 0.0)
    if in_use + asked > cap:
        raise InvalidRequest(
            f"spec.max_cost_usd: {asked:g} USD would take your team's unfinished generation jobs to "
            f"{in_use + asked:g} USD, over its cap of {cap:g} USD ({in_use:g} USD in use). Lower max_cost_usd, or "
            "wait for (or cancel) running generation jobs.",
            errors=[{"loc": ["body", "spec", "max_cost_usd"], "msg": "over the team's generation budget"}])
    return spec
