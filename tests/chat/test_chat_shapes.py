"""Source shapes to ChatML: each converter, detection, explicit mappings and the errors that name fields."""

import pickle

import pytest

from app.chat.shapes import ShapeError, UnknownShapeError, converter_for, detect_shape

CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


def convert(shape, row):
    return converter_for(shape)(row)


def test_messages_shape_copies_role_content_and_reasoning_only():
    row = {
        "messages": [
            {"role": "user", "content": " Hi ", "name": "u"},
            {"role": "assistant", "content": "A", "reasoning_content": "R"},
        ]
    }
    assert convert("messages", row) == [
        {"role": "user", "content": " Hi "},
        {"role": "assistant", "content": "A", "reasoning_content": "R"},
    ]


def test_sharegpt_maps_roles_and_accepts_role_content_turns():
    row = {
        "conversations": [
            {"from": "system", "value": "S"},
            {"from": "human", "value": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"from": "gpt", "value": "More"},
        ]
    }
    assert convert("sharegpt", row) == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "assistant", "content": "More"},
    ]


def test_sharegpt_leaves_unknown_roles_for_the_validator():
    row = {"conversations": [{"from": "bing", "value": "x"}]}
    assert convert("sharegpt", row) == [{"role": "bing", "content": "x"}]


def test_alpaca_joins_instruction_and_non_empty_input():
    row = {"instruction": "Translate", "input": "chat", "output": "cat"}
    assert convert("alpaca", row) == [
        {"role": "user", "content": "Translate\n\nchat"},
        {"role": "assistant", "content": "cat"},
    ]
    for empty in ("", "  ", None):
        row = {"instruction": "Say hi ", "input": empty, "output": " hi"}
        assert convert("alpaca", row) == [
            {"role": "user", "content": "Say hi "},
            {"role": "assistant", "content": " hi"},
        ]
    assert convert("alpaca", {"instruction": "Say hi", "output": "hi"})[0]["content"] == "Say hi"


def test_prompt_completion_accepts_strings_and_message_lists():
    assert convert("prompt_completion", {"prompt": "Hi", "completion": "Hello"}) == CHAT
    row = {"prompt": [{"role": "system", "content": "S"}, CHAT[0]], "completion": [CHAT[1]]}
    assert convert("prompt_completion", row) == [{"role": "system", "content": "S"}, *CHAT]


def test_question_answer():
    assert convert("question_answer", {"question": "Hi", "answer": "Hello", "id": 3}) == CHAT


def test_explicit_turn_mapping_with_custom_keys_and_roles():
    shape = {
        "messages": "dialog",
        "role_map": {"bot": "assistant"},
        "role_key": "speaker",
        "content_key": "text",
    }
    row = {"dialog": [{"speaker": "human", "text": "Hi"}, {"speaker": "bot", "text": "Hello"}]}
    assert convert(shape, row) == CHAT


def test_explicit_column_mapping_keeps_the_given_order():
    shape = {"columns": {"sys": "system", "q": "user", "a": "assistant"}}
    row = {"a": "Hello", "q": "Hi", "sys": "S"}
    assert convert(shape, row) == [{"role": "system", "content": "S"}, *CHAT]


@pytest.mark.parametrize(
    ("shape", "row", "field", "message"),
    [
        ("messages", {"conversations": []}, "messages", "missing column 'messages'"),
        ("messages", {"messages": "Hi"}, "messages", "expected a list of turns, got str"),
        ("messages", {"messages": [CHAT[0], "x"]}, "messages[1]", "expected an object, got str"),
        ("messages", {"messages": [{"role": "user"}]}, "messages[0].content", "missing"),
        ("sharegpt", {"conversations": None}, "conversations", "is null"),
        (
            "sharegpt",
            {"conversations": [{"value": "x"}]},
            "conversations[0].from",
            "missing (expected 'role' or 'from')",
        ),
        ("alpaca", {"instruction": "x"}, "output", "missing column 'output'"),
        (
            "alpaca",
            {"instruction": 3, "input": "y", "output": "z"},
            "instruction",
            "expected a string, got int",
        ),
        ("alpaca", {"instruction": "x", "input": 3, "output": "z"}, "input", "expected a string, got int"),
        ("prompt_completion", {"prompt": "x"}, "completion", "missing column 'completion'"),
        ("question_answer", {"question": "x", "answer": None}, "answer", "is null"),
        ({"columns": {"q": "user", "a": "assistant"}}, {"q": "x"}, "a", "missing column 'a'"),
        (
            {"messages": "dialog", "content_key": "text"},
            {"dialog": [{"role": "user"}]},
            "dialog[0].text",
            "missing",
        ),
    ],
)
def test_shape_errors_name_the_field(shape, row, field, message):
    with pytest.raises(ShapeError) as excinfo:
        convert(shape, row)
    assert (excinfo.value.field, excinfo.value.message) == (field, message)
    assert str(excinfo.value) == f"{field}: {message}"


def test_shape_error_survives_pickling():
    err = pickle.loads(pickle.dumps(ShapeError("output", "missing column 'output'")))
    assert (err.field, err.message) == ("output", "missing column 'output'")


def test_converters_do_not_check_content_types_the_validator_reports():
    assert convert("question_answer", {"question": 1, "answer": ["x"]}) == [
        {"role": "user", "content": 1},
        {"role": "assistant", "content": ["x"]},
    ]


@pytest.mark.parametrize(
    ("rows", "shape"),
    [
        ([{"messages": CHAT, "conversations": []}], "messages"),
        ([{"conversations": [], "id": 1}], "sharegpt"),
        ([{"instruction": "a", "output": "b"}, {"instruction": "a", "input": "i", "output": "b"}], "alpaca"),
        ([{"prompt": "a", "completion": "b"}], "prompt_completion"),
        ([{"question": "a", "answer": "b", "source": "x"}], "question_answer"),
    ],
)
def test_detect_shape_from_columns(rows, shape):
    assert detect_shape(rows) == shape


def test_detect_shape_error_lists_columns_seen_and_shapes_known():
    with pytest.raises(UnknownShapeError) as excinfo:
        detect_shape([{"q": "a", "a": "b"}, {"q": "c", "a": "d", "meta": 1}])
    text = str(excinfo.value)
    assert "['q', 'a', 'meta']" in text
    for known in (
        "messages",
        "sharegpt (conversations)",
        "alpaca (instruction, output)",
        "prompt_completion",
        "question_answer (question, answer)",
        "'columns'",
    ):
        assert known in text
    assert isinstance(excinfo.value, ValueError)


def test_detect_shape_needs_the_columns_in_every_sampled_row():
    with pytest.raises(UnknownShapeError):
        detect_shape([{"question": "a", "answer": "b"}, {"question": "c"}])
    with pytest.raises(UnknownShapeError, match="no rows"):
        detect_shape([])


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ("chatml", "unknown shape 'chatml'"),
        ({"columns": {"q": "human"}}, "not one of system, user, assistant"),
        ({"columns": {}}, "non-empty"),
        ({"messages": "d", "role_map": {"bot": "robot"}}, r"role_map\['bot'\]"),
        ({"messages": "d", "colour": "red"}, "unknown mapping keys"),
        ({"fields": {}}, "needs 'columns' or 'messages'"),
    ],
)
def test_bad_shape_specs_fail_before_reading_rows(shape, match):
    with pytest.raises(UnknownShapeError, match=match):
        converter_for(shape)
