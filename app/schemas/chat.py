"""POST /v1/checkpoints/{ref}/chat: one reply from a checkpoint's sampler weights, or from a base model."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from app.schemas.common import Seed, StrictModel

MAX_MESSAGES = 200
MAX_STOPS = 4
Stop = Annotated[str, Field(min_length=1, max_length=100)]


class ChatRequest(StrictModel):
    messages: list[dict[str, Any]] = Field(
        min_length=1, max_length=MAX_MESSAGES,
        description="ChatML messages (system first if any, then user and assistant alternating, user first); the "
                    "last one is the user turn to answer")
    max_tokens: int = Field(default=512, ge=1, le=8192, description="at most this many tokens in the reply")
    temperature: float = Field(default=0.7, ge=0, le=2, description="0 = greedy")
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: Seed | None = None
    stop: list[Stop] = Field(default_factory=list, max_length=MAX_STOPS,
                            description=f"at most {MAX_STOPS} strings (1–100 characters); the reply ends before the "
                                        "first one found")
    enable_thinking: bool = Field(default=True, description="false: Qwen3's non-thinking mode (no reasoning)")


class ChatMessage(BaseModel):
    role: Literal["assistant"]
    content: str
    thinking: str | None = Field(description="the reasoning inside <think>…</think>, separated from the answer; "
                                             "null when there was none")


class ChatUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class ChatResponse(BaseModel):
    model: str = Field(description="the checkpoint id or base model that answered")
    message: ChatMessage
    finish_reason: Literal["stop", "length"]
    usage: ChatUsage
