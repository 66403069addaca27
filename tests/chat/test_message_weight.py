"""Per-message `weight` (OpenAI's fine-tuning format): `weight: 0` on an assistant turn means "do not train on it".

Validated in ChatML, kept by the `messages` shape, and honoured by the renderer and so by training's datums.
"""

from __future__ import annotations

from typing import Any

import pytest

from app.chat import (
    RENDERER_VERSION,
    Reason,
    converter_for,
    count_batch,
    normalize_key,
    render,
    render_batch,
    render_pieces,
    validate_conversation,
)
from app.schemas.training import TrainingSpec
from workers.pipelines.training import _datums


def conversation(**weights: Any) -> list[dict[str, Any]]:
    """system, then two user/assistant exchanges; `first=` / `second=` put a weight on those assistant turns."""
    first: dict[str, Any] = {"role": "assistant", "content": "Draft answer: 5."}
    second: dict[str, Any] = {"role": "assistant", "content": "Corrected answer: 4."}
    if "first" in weights:
        first["weight"] = weights["first"]
    if "second" in weights:
        second["weight"] = weights["second"]
    return [
        {"role": "system", "content": "You do arithmetic."},
        {"role": "user", "content": "What is 2 + 2?"},
        first,
        {"role": "user", "content": "Are you sure?"},
        second,
    ]


def trained_text(messages: list[dict[str, Any]], **kw: Any) -> str:
    return "".join(p.text for p in render_pieces(messages, **kw) if p.weight)


# --- validation -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight", [0, 1])
def test_assistant_weight_0_or_1_is_valid(weight: int) -> None:
    assert validate_conversation(conversation(first=weight, second=weight)) is None


def test_null_weight_counts_as_absent() -> None:
    # Parquet rows fill a missing struct field with null on every message, user ones included.
    messages = conversation(first=None)
    messages[1]["weight"] = None
    assert validate_conversation(messages) is None


@pytest.mark.parametrize("weight", [2, -1, 0.0, 1.0, 0.5, True, False, "0", [0], {"w": 0}])
def test_other_weight_values_are_rejected_naming_the_field(weight: Any) -> None:
    problem = validate_conversation(conversation(second=weight))
    assert problem is not None
    assert problem.reason == Reason.BAD_WEIGHT == "bad_weight"
    assert problem.field == "messages[4].weight"
    assert "integer 0" in problem.message and repr(weight) in problem.message


def test_weight_on_another_role_is_rejected() -> None:
    for index in (0, 1):
        messages = conversation()
        messages[index]["weight"] = 0
        problem = validate_conversation(messages)
        assert problem is not None and problem.reason == Reason.BAD_WEIGHT
        assert problem.field == f"messages[{index}].weight"
        assert "only assistant messages" in problem.message and messages[index]["role"] in problem.message


def test_a_huge_bad_weight_is_not_echoed_whole() -> None:
    problem = validate_conversation(conversation(second="x" * 10_000))
    assert problem is not None and len(problem.message) < 200


# --- shapes -----------------------------------------------------------------------------------------------------


def test_messages_shape_keeps_weight() -> None:
    row = {"messages": conversation(first=0, second=1)}
    out = converter_for("messages")(row)
    assert out == row["messages"]
    assert [m.get("weight") for m in out] == [None, None, 0, None, 1]


def test_other_shapes_ignore_a_weight_key() -> None:
    row = {"conversations": [{"from": "human", "value": "Hi", "weight": 0.3},
                             {"from": "gpt", "value": "Hello", "weight": 0}]}
    out = converter_for("sharegpt")(row)
    assert out == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert validate_conversation(out) is None


# --- renderer ---------------------------------------------------------------------------------------------------


def test_weight_zero_turn_is_not_trained_and_text_is_unchanged() -> None:
    plain = render(conversation())
    weighted = render(conversation(first=0))
    assert weighted.tokens == plain.tokens
    assert trained_text(conversation()) == "Draft answer: 5.<|im_end|><think>\n\n</think>\n\nCorrected answer: 4.<|im_end|>"
    assert trained_text(conversation(first=0)) == "<think>\n\n</think>\n\nCorrected answer: 4.<|im_end|>"
    assert 0 < weighted.trained_tokens < plain.trained_tokens
    # every token of the weight-0 message (body and <|im_end|>) has weight 0
    pieces = render_pieces(conversation(first=0))
    text = ""
    for p in pieces:
        text += p.text
        if "Draft answer" in text and "Are you sure" not in text:
            assert p.weight == 0.0


def test_weight_one_or_absent_renders_exactly_as_before() -> None:
    for train_on in ("all_assistant", "last_assistant"):
        for thinking in (True, False):
            plain = render(conversation(), train_on=train_on, enable_thinking=thinking)
            ones = render(conversation(first=1, second=1), train_on=train_on, enable_thinking=thinking)
            nulls = render(conversation(first=None, second=None), train_on=train_on, enable_thinking=thinking)
            assert ones == plain == nulls
    assert RENDERER_VERSION == 1  # output for weight-less data did not change, so the version stays


def test_weight_zero_wins_over_train_on() -> None:
    # last_assistant with the last turn weight 0: nothing is trained (the earlier turn is not promoted).
    assert trained_text(conversation(second=0), train_on="last_assistant") == ""
    assert render(conversation(second=0), train_on="last_assistant").trained_tokens == 0
    # a weight-0 earlier turn does not matter under last_assistant
    assert render(conversation(first=0), train_on="last_assistant") == render(conversation(), train_on="last_assistant")
    # both zero: nothing trained under all_assistant either
    assert render(conversation(first=0, second=0)).trained_tokens == 0
    # weight 0 with reasoning: the think block is not trained either
    messages = conversation(second=0)
    messages[4]["reasoning_content"] = "Count: 2, 3, 4."
    assert "Count" in "".join(p.text for p in render_pieces(messages))
    assert trained_text(messages) == "Draft answer: 5.<|im_end|>"


def test_batch_and_counts_agree_with_render() -> None:
    convs = [conversation(), conversation(first=0), conversation(second=0), conversation(first=0, second=0)]
    for train_on in ("all_assistant", "last_assistant"):
        singles = [render(c, train_on=train_on) for c in convs]
        assert render_batch(convs, train_on=train_on) == singles
        assert count_batch(convs, train_on=train_on) == [(len(r.tokens), r.trained_tokens) for r in singles]


# --- training's datums ------------------------------------------------------------------------------------------


def test_training_datums_carry_zero_weights() -> None:
    spec = TrainingSpec(train_artifact="art_x")
    convs = [conversation(), conversation(first=0)]
    batch = _datums(spec, convs, [0, 1])
    plain, weighted = batch.datums
    r_plain, r_weighted = render(convs[0]), render(convs[1])
    assert plain.loss_fn_inputs["weights"].data == r_plain.weights[1:]
    assert weighted.loss_fn_inputs["weights"].data == r_weighted.weights[1:]
    assert weighted.loss_fn_inputs["target_tokens"].data == plain.loss_fn_inputs["target_tokens"].data
    # the targets of the weight-0 turn ("Draft answer: 5.<|im_end|>") have loss weight 0 in the datum
    n_draft = r_plain.trained_tokens - r_weighted.trained_tokens
    assert sum(weighted.loss_fn_inputs["weights"].data) == sum(plain.loss_fn_inputs["weights"].data) - n_draft
    assert batch.trained == r_plain.trained_tokens + r_weighted.trained_tokens


# --- deduplication ----------------------------------------------------------------------------------------------


def test_dedup_key_tells_apart_an_untrained_turn_and_keeps_old_keys() -> None:
    assert normalize_key(conversation(first=0)) != normalize_key(conversation())
    assert normalize_key(conversation(first=1)) == normalize_key(conversation())
    assert normalize_key(conversation()) == (
        b'[["system","You do arithmetic."],["user","What is 2 + 2?"],["assistant","Draft answer: 5."],'
        b'["user","Are you sure?"],["assistant","Corrected answer: 4."]]')
    with_reasoning = conversation(second=0)
    with_reasoning[4]["reasoning_content"] = "0"
    assert normalize_key(with_reasoning) != normalize_key(conversation(second=0))
