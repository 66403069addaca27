"""Submit-time checks that need no database: a job kind that runs on Tinker is refused, naming the setting,
when the server has no Tinker key."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter

from app.errors import InvalidRequest
from app.schemas.jobs import JobCreate
from app.services import job_checks
from app.services.auth import Caller
from app.settings import Settings


@pytest.mark.parametrize(("kind", "spec"), [
    ("training", {"train_artifact": "art_x"}),
    ("evaluation", {"eval_artifact": "art_x"}),
    ("export", {"checkpoint": "ckpt_x"}),
])
def test_tinker_kinds_need_the_servers_key(kind: str, spec: dict[str, Any]) -> None:
    settings = Settings().model_copy(update={"tinker_api_key": None, "tinker_fake": None})
    body = TypeAdapter(JobCreate).validate_python({"kind": kind, "spec": spec})
    caller = Caller(team_id="team_x", key_id="key_x", scopes=("jobs:write",))
    with pytest.raises(InvalidRequest) as refused:
        job_checks.check_spec(None, caller, kind, body, settings)  # type: ignore[arg-type] - refused before SQL
    assert str(refused.value.detail).startswith(f"{kind.capitalize()} jobs need TINKER_API_KEY")
    assert refused.value.errors == [{"loc": ["body", "kind"], "msg": "no key"}]
