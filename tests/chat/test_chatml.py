"""ChatML validation codes, duplicate keys and system prompts."""

import pickle

import pytest

from app.chat.chatml import (
    Reason,
    apply_system_prompt,
    conversation_hash,
    normalize_key,
    validate_conversation,
)

U = {"role": "user", "content": "Hi"}
A = {"role": "assistant", "content": "Hello"}
S = {"role": "system", "content": "Be brief."}


def test_valid_conversations_pass():
    assert validate_conversation([U, A]) is None
    assert validate_conversation([S, U, A, U, A], min_turns=2) is None
    assert (
        validate_conversation([U, {"role": "assistant", "content": "x", "reasoning_content": "why"}]) is None
    )


@pytest.mark.parametrize(
    ("messages", "reason", "field"),
    [
        ({"role": "user"}, Reason.NOT_A_LIST, "messages"),
        ([U, "hello"], Reason.NOT_A_MESSAGE, "messages[1]"),
        ([{"role": "human", "content": "Hi"}, A], Reason.UNKNOWN_ROLE, "messages[0].role"),
        ([U, {"role": "tool", "content": "{}"}], Reason.UNKNOWN_ROLE, "messages[1].role"),
        ([{"role": ["user"], "content": "Hi"}, A], Reason.UNKNOWN_ROLE, "messages[0].role"),
        ([{"content": "Hi"}, A], Reason.UNKNOWN_ROLE, "messages[0].role"),
        ([U, {"role": "assistant", "content": ["x"]}], Reason.NON_STRING_CONTENT, "messages[1].content"),
        ([U, {"role": "assistant"}], Reason.NON_STRING_CONTENT, "messages[1].content"),
        (
            [U, {"role": "assistant", "content": "x", "reasoning_content": 3}],
            Reason.NON_STRING_CONTENT,
            "messages[1].reasoning_content",
        ),
        ([U, {"role": "assistant", "content": " \n\t"}], Reason.EMPTY_CONTENT, "messages[1].content"),
        ([{"role": "user", "content": ""}, A], Reason.EMPTY_CONTENT, "messages[0].content"),
        ([U, S, A], Reason.BAD_ALTERNATION, "messages[1].role"),
        ([A, U, A], Reason.BAD_ALTERNATION, "messages[0].role"),
        ([U, U, A], Reason.BAD_ALTERNATION, "messages[1].role"),
        ([U, A, A], Reason.BAD_ALTERNATION, "messages[2].role"),
        ([], Reason.NO_ASSISTANT_TURN, "messages"),
        ([S, U], Reason.NO_ASSISTANT_TURN, "messages"),
        ([U, A, U], Reason.LAST_TURN_NOT_ASSISTANT, "messages[2].role"),
    ],
)
def test_each_problem_has_a_stable_reason_and_field(messages, reason, field):
    problem = validate_conversation(messages)
    assert problem is not None
    assert (problem.reason, problem.field) == (reason, field)
    assert problem.message


def test_too_few_turns_counts_assistant_replies():
    problem = validate_conversation([S, U, A], min_turns=2)
    assert problem is not None
    assert problem.reason == "too_few_turns"
    assert problem.message == "1 assistant turn(s), at least 2 required"


def test_only_the_first_problem_is_reported_and_nothing_is_changed():
    messages = [{"role": "user", "content": " Hi "}, {"role": "bot", "content": ""}]
    before = pickle.dumps(messages)
    problem = validate_conversation(messages)
    assert problem is not None and problem.reason == "unknown_role"
    assert pickle.dumps(messages) == before


def test_reason_codes_are_plain_strings():
    assert {r.value for r in Reason} == {
        "not_a_list",
        "not_a_message",
        "unknown_role",
        "non_string_content",
        "empty_content",
        "bad_alternation",
        "no_assistant_turn",
        "bad_weight",
        "last_turn_not_assistant",
        "too_few_turns",
    }


def test_duplicate_key_ignores_surrounding_whitespace_and_extra_keys():
    a = [{"role": "user", "content": "Hi "}, {"role": "assistant", "content": "\nHello", "name": "x"}]
    b = [U, A]
    assert normalize_key(a) == normalize_key(b)
    assert conversation_hash(a) == conversation_hash(b)
    assert len(conversation_hash(a)) == 16


def test_duplicate_key_separates_roles_texts_and_reasoning():
    base = conversation_hash([U, A])
    assert conversation_hash([{"role": "system", "content": "Hi"}, A]) != base
    assert conversation_hash([U, {"role": "assistant", "content": "Hello!"}]) != base
    assert conversation_hash([U, {**A, "reasoning_content": "think"}]) != base
    assert conversation_hash([U, {**A, "reasoning_content": " "}]) == base


def test_system_prompt_add_keeps_an_existing_one_and_replace_overrides_it():
    assert apply_system_prompt([U, A], "Sys") == [{"role": "system", "content": "Sys"}, U, A]
    assert apply_system_prompt([S, U, A], "Sys") == [S, U, A]
    assert apply_system_prompt([S, U, A], "Sys", mode="replace") == [
        {"role": "system", "content": "Sys"},
        U,
        A,
    ]
    assert apply_system_prompt([U, A], "Sys", mode="replace") == [{"role": "system", "content": "Sys"}, U, A]


def test_system_prompt_returns_a_new_list_and_rejects_unknown_modes():
    original = [S, U, A]
    result = apply_system_prompt(original, "Sys", mode="replace")
    assert original == [S, U, A] and result is not original
    with pytest.raises(ValueError, match="mode"):
        apply_system_prompt(original, "Sys", mode="prepend")  # type: ignore[arg-type]
