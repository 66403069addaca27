"""The judge's rules: reading a judge's answer, combining the two orders, the win rate's interval; and the
submit-time check for the server's OpenRouter key."""

from __future__ import annotations

import pytest

from app.errors import InvalidRequest
from app.schemas.evaluation import EvaluationSpec
from workers.pipelines.judge import combine, parse_verdict, win_rate


@pytest.mark.parametrize(("answer", "winner"), [
    ('{"winner": "A", "reason": "clearer"}', "A"),
    ('Sure!\n```json\n{"winner": "b", "reason": "correct"}\n```', "B"),
    ('{"verdict": "Answer A", "reason": "x"}', "A"),
    ('{"winner": "tie", "reason": "same"}', "tie"),
    ("After comparing both, winner: B. It is more precise.", "B"),
])
def test_a_judges_answer_is_read_tolerantly(answer: str, winner: str) -> None:
    assert parse_verdict(answer)[0] == winner


@pytest.mark.parametrize("answer", ['{"reason": "both fine"}', "Reply B is better. A rambles.", "I prefer b"])
def test_an_answer_without_a_winner_is_a_readable_failure(answer: str) -> None:
    """Prose that only suggests a winner is not read as one: a wrong verdict is worse than none."""
    with pytest.raises(ValueError, match="names no winner"):
        parse_verdict(answer)


def test_the_two_orders_decide_together() -> None:
    # (winner when the candidate is A, winner when the candidate is B)
    assert combine("A", "B") == "win"  # preferred in both orders
    assert combine("B", "A") == "loss"  # in neither
    assert combine("A", "A") == "tie"  # position bias: first both times
    assert combine("B", "B") == "tie"
    assert combine("tie", "tie") == "tie"
    assert combine("A", "tie") == "win" and combine("tie", "A") == "loss"


def test_win_rate_counts_ties_as_half_with_a_wilson_interval() -> None:
    assert win_rate(0, 10, 0)["win_rate"] == 0.5
    perfect = win_rate(10, 0, 0)
    assert perfect["win_rate"] == 1.0 and perfect["ci95"][1] == 1.0 and 0.6 < perfect["ci95"][0] < 0.75
    wide, narrow = win_rate(3, 0, 3)["ci95"], win_rate(300, 0, 300)["ci95"]
    assert wide[0] < narrow[0] < 0.5 < narrow[1] < wide[1]
    assert win_rate(0, 0, 0) == {"win": 0, "tie": 0, "loss": 0, "n": 0, "win_rate": None, "ci95": None}


def test_judge_defaults_to_the_base_when_the_base_is_evaluated() -> None:
    assert EvaluationSpec(eval_artifact="art_x", checkpoints=["ckpt_x"], judge={"model": "m"}).judge.against == "base"
    spec = EvaluationSpec(eval_artifact="art_x", checkpoints=["ckpt_x"], include_base=False, judge={"model": "m"})
    assert spec.judge is not None and spec.judge.against == "reference"


def test_a_judge_without_the_servers_openrouter_key_is_a_422_naming_the_setting(backend: dict[str, str]) -> None:
    from app.db import session_scope
    from app.schemas.jobs import EvaluationJobCreate
    from app.services import auth
    from app.services import jobs as jobs_service
    from app.settings import Settings

    body = EvaluationJobCreate(kind="evaluation", spec=EvaluationSpec(
        eval_artifact="art_x", checkpoints=["ckpt_x"], judge={"model": "m"}))
    settings = Settings(openrouter_api_key=None, tinker_fake="tests.fakes.tinker_fake:make_fake_service_client")
    with session_scope() as session, pytest.raises(InvalidRequest, match="OPENROUTER_API_KEY") as raised:
        team = auth.get_or_create_team(session, "judge-no-key")
        jobs_service.submit(session, caller=auth.Caller(team.id, "k", ("jobs:write",)), body=body,
                            spec=body.spec.model_dump(mode="json"), kind="evaluation", idempotency_key=None,
                            settings=settings)
    assert raised.value.errors[0]["loc"] == ["body", "spec", "judge"]
