"""Render ChatML to Qwen3 tokens and per-token loss weights, exactly as Qwen3's chat template lays text out.

Layout (Qwen3-8B `chat_template`, no tools): every message is `<|im_start|>{role}\\n{body}<|im_end|>\\n`.

Weights: the header `<|im_start|>{role}\\n` has weight 0; the body and its `<|im_end|>` have weight 1 on trained
assistant messages (all of them, or only the last, per `train_on`) and 0 elsewhere. The `\\n` after `<|im_end|>`
counts as part of the next header (weight 0), so the model learns to stop at `<|im_end|>`. The template's final
`\\n` is kept (weight 0) so the tokens equal the template's text.

Per-message `weight` (OpenAI's fine-tuning format, validated in `app.chat.chatml`): an assistant message with
`"weight": 0` is never trained, whatever `train_on` says: every token of its body and `<|im_end|>` gets weight 0.
`train_on` picks the candidates first and `weight` only removes some: with `last_assistant`, a final assistant
turn with weight 0 leaves nothing trained (the previous turn is not promoted). `weight` 1, null or absent changes
nothing, so conversations without weights render exactly as before (same tokens, same weights; the weight never
changes the text, only which tokens are trained).

Thinking, as the template does it:
- an assistant message's reasoning is `reasoning_content` when that is a string, else the text before `</think>`
  in `content` (after `<think>`), and the content is what follows `</think>`;
- assistant messages after the last user query (in a validated conversation: just the final answer) are written
  `<think>\\n{reasoning}\\n</think>\\n\\n{content}`: the final one always, so with no reasoning it gets the empty
  block `<think>\\n\\n</think>\\n\\n`; earlier ones only if they have reasoning;
- assistant messages before the last user query lose their reasoning (content only). With `all_assistant` those
  turns are therefore trained without a think block, which is what Qwen3 sees in its own multi-turn history.
The think block is part of the assistant body and is weighted like it (1 when trained), empty or not: the model
does emit `<think>\\n\\n</think>\\n\\n` itself when its generation prompt ends at `<|im_start|>assistant\\n`.

`enable_thinking`: Qwen3's template reads it only for the generation prompt (`enable_thinking=False` appends the
empty block after `<|im_start|>assistant\\n`); a finished conversation renders the same either way. So here
`enable_thinking=False` means "train non-thinking mode": all reasoning is dropped, which makes the final answer
carry the empty block, i.e. the template's exact text for the conversation without reasoning, and the same text a
non-thinking prompt (`render_prompt(..., enable_thinking=False)`) continues. Reasoning is never silently trained
when thinking is off.

Tokenization is per segment (header, body, `<|im_end|>`) so weights align exactly with message boundaries.
Special tokens split the text anyway; the only place separate encoding can differ from encoding the template's
whole string is a body that starts with whitespace containing a newline (e.g. `"\\n\\nHi"`): whole-string BPE
would join the header's `\\n` with it (`\\n\\n\\n` as one token). We keep the split: at sampling time the prompt
always ends with the header's own `\\n` token, so the split form is what the model actually continues from.
Special-token strings typed inside content (`<|im_end|>`) stay plain text; see `app.chat.tokenizer`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from app.chat.tokenizer import IM_END, IM_START, NEWLINE, get_tokenizer

TrainOn = Literal["all_assistant", "last_assistant"]
TRAIN_ON: tuple[TrainOn, ...] = ("all_assistant", "last_assistant")
EMPTY_THINK = "<think>\n\n</think>\n\n"


@dataclass(frozen=True, slots=True)
class Rendered:
    """Token ids and one loss weight per token (the weight of predicting that token from those before it)."""

    tokens: list[int]
    weights: list[float]

    @property
    def trained_tokens(self) -> int:
        return len(self.weights) - self.weights.count(0.0)


class Piece(NamedTuple):
    token: int
    text: str
    weight: float


@functools.lru_cache(maxsize=64)
def _header(role: str) -> tuple[int, ...]:
    return (IM_START, *get_tokenizer().encode(role + "\n"))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _weight_zero(message: Mapping[str, Any]) -> bool:
    """`weight: 0` (OpenAI's "do not train on this turn"); a bool is not a weight."""
    weight = message.get("weight")
    return weight is not None and not isinstance(weight, bool) and weight == 0


def _last_query_index(messages: Sequence[Mapping[str, Any]]) -> int:
    """The template's `last_query_index`: the last user message that is not a wrapped tool response."""
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        content = m.get("content")
        if (
            m.get("role") == "user"
            and isinstance(content, str)
            and not (content.startswith("<tool_response>") and content.endswith("</tool_response>"))
        ):
            return i
    return len(messages) - 1


def _assistant_body(
    message: Mapping[str, Any], *, after_query: bool, last: bool, enable_thinking: bool
) -> str:
    content = _text(message.get("content"))
    reasoning = message.get("reasoning_content")
    if not isinstance(reasoning, str):
        reasoning = ""
        if "</think>" in content:
            reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
            content = content.split("</think>")[-1].lstrip("\n")
    if not enable_thinking:
        reasoning = ""
    if after_query and (last or reasoning):
        return "<think>\n" + reasoning.strip("\n") + "\n</think>\n\n" + content.lstrip("\n")
    return content


def _plan(
    messages: Sequence[Mapping[str, Any]], train_on: TrainOn, enable_thinking: bool
) -> tuple[list[str], list[str], list[float]]:
    """Roles, body texts and body weights, one per message."""
    if train_on not in TRAIN_ON:
        raise ValueError(f"train_on must be one of {TRAIN_ON}, got {train_on!r}")
    n = len(messages)
    last_query = _last_query_index(messages)
    last_assistant = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
    roles: list[str] = []
    bodies: list[str] = []
    weights: list[float] = []
    for i, m in enumerate(messages):
        role = _text(m.get("role"))
        if role == "assistant":
            bodies.append(
                _assistant_body(
                    m, after_query=i > last_query, last=i == n - 1, enable_thinking=enable_thinking
                )
            )
            trained = (train_on == "all_assistant" or i == last_assistant) and not _weight_zero(m)
        else:
            bodies.append(_text(m.get("content")))
            trained = False
        roles.append(role)
        weights.append(1.0 if trained else 0.0)
    return roles, bodies, weights


def _assemble(roles: list[str], body_ids: list[list[int]], body_weights: list[float]) -> Rendered:
    tokens: list[int] = []
    weights: list[float] = []
    for i, (role, ids, w) in enumerate(zip(roles, body_ids, body_weights, strict=True)):
        head = _header(role)
        if i:
            tokens.append(NEWLINE)
            weights.append(0.0)
        tokens += head
        weights += [0.0] * len(head)
        tokens += ids
        tokens.append(IM_END)
        weights += [w] * (len(ids) + 1)
    tokens.append(NEWLINE)
    weights.append(0.0)
    return Rendered(tokens, weights)


def render(
    messages: Sequence[Mapping[str, Any]],
    *,
    train_on: TrainOn = "all_assistant",
    enable_thinking: bool = True,
) -> Rendered:
    """Tokens and loss weights for one conversation (see the module docstring for the exact rules).

    An assistant message with `weight: 0` gets loss weight 0 on all its tokens whatever `train_on` says; with
    `last_assistant` a final turn with weight 0 means nothing in the conversation is trained.
    """
    if not messages:
        raise ValueError("cannot render an empty conversation")
    roles, bodies, weights = _plan(messages, train_on, enable_thinking)
    tok = get_tokenizer()
    return _assemble(roles, [tok.encode(b) for b in bodies], weights)


def render_batch(
    conversations: Sequence[Sequence[Mapping[str, Any]]],
    *,
    train_on: TrainOn = "all_assistant",
    enable_thinking: bool = True,
) -> list[Rendered]:
    """`render` over many conversations, encoding all message bodies in one threaded tiktoken batch."""
    plans, texts = plan_batch(conversations, train_on=train_on, enable_thinking=enable_thinking)
    encoded = get_tokenizer().encode_batch(texts)
    out: list[Rendered] = []
    start = 0
    for roles, bodies, weights in plans:
        end = start + len(bodies)
        out.append(_assemble(roles, encoded[start:end], weights))
        start = end
    return out


Planned = tuple[list[tuple[list[str], list[str], list[float]]], list[str]]


def plan_batch(
    conversations: Sequence[Sequence[Mapping[str, Any]]],
    *,
    train_on: TrainOn = "all_assistant",
    enable_thinking: bool = True,
) -> Planned:
    """The Python half of rendering (roles, body texts, weights), separable from the encoding half so a
    pipeline can plan batch k+1 while batch k is being tokenized on another thread."""
    plans = []
    texts: list[str] = []
    for messages in conversations:
        if not messages:
            raise ValueError("cannot render an empty conversation")
        plan = _plan(messages, train_on, enable_thinking)
        plans.append(plan)
        texts += plan[1]
    return plans, texts


def count_planned(planned: Planned) -> list[tuple[int, int]]:
    """(tokens, trained tokens) per planned conversation, exactly as `render_batch` would give, without
    building token and weight lists (dataset jobs only need the counts)."""
    plans, texts = planned
    lengths = get_tokenizer().count_batch(texts)
    out: list[tuple[int, int]] = []
    start = 0
    for roles, _, weights in plans:
        # Per message: header + body + <|im_end|>; plus one "\n" after each message.
        total = trained = 0
        for role, w, n in zip(roles, weights, lengths[start : start + len(roles)], strict=True):
            total += len(_header(role)) + n + 2
            if w:
                trained += n + 1
        out.append((total, trained))
        start += len(roles)
    return out


def count_batch(
    conversations: Sequence[Sequence[Mapping[str, Any]]],
    *,
    train_on: TrainOn = "all_assistant",
    enable_thinking: bool = True,
) -> list[tuple[int, int]]:
    """(tokens, trained tokens) per conversation, as `render_batch` would give."""
    return count_planned(plan_batch(conversations, train_on=train_on, enable_thinking=enable_thinking))


def render_pieces(
    messages: Sequence[Mapping[str, Any]],
    *,
    train_on: TrainOn = "all_assistant",
    enable_thinking: bool = True,
) -> list[Piece]:
    """Every token with its text and weight, to show a user exactly what will be trained."""
    rendered = render(messages, train_on=train_on, enable_thinking=enable_thinking)
    texts = get_tokenizer().pieces(rendered.tokens)
    return [Piece(t, s, w) for t, s, w in zip(rendered.tokens, texts, rendered.weights, strict=True)]


def render_prompt(messages: Sequence[Mapping[str, Any]], *, enable_thinking: bool = True) -> list[int]:
    """The generation prompt for sampling a reply (Qwen3's `add_generation_prompt=True`).

    Ends at `<|im_start|>assistant\\n`, plus the empty think block when `enable_thinking=False`, as the template does.
    """
    tok = get_tokenizer()
    tokens: list[int] = []
    if messages:
        roles, bodies, _ = _plan(messages, "all_assistant", enable_thinking)
        tokens = _assemble(roles, [tok.encode(b) for b in bodies], [0.0] * len(bodies)).tokens
    tokens += _header("assistant")
    if not enable_thinking:
        tokens += tok.encode(EMPTY_THINK)
    return tokens
