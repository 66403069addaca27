"""Chat core shared by the dataset, training and evaluation jobs.

ChatML rows (`chatml`), source shapes to ChatML (`shapes`), the exact offline Qwen3 tokenizer (`tokenizer`) and the
Qwen3 renderer that turns a conversation into tokens and loss weights (`render`).
"""

from app.chat.chatml import (
    Message,
    Problem,
    Reason,
    apply_system_prompt,
    conversation_hash,
    normalize_key,
    validate_conversation,
)
from app.chat.render import (
    Piece,
    Rendered,
    TrainOn,
    count_batch,
    count_planned,
    plan_batch,
    render,
    render_batch,
    render_pieces,
    render_prompt,
)
from app.chat.shapes import ShapeError, UnknownShapeError, converter_for, detect_shape
from app.chat.tokenizer import QwenTokenizer, get_tokenizer

__all__ = [
    "Message",
    "Piece",
    "Problem",
    "QwenTokenizer",
    "Reason",
    "Rendered",
    "ShapeError",
    "TrainOn",
    "UnknownShapeError",
    "apply_system_prompt",
    "conversation_hash",
    "converter_for",
    "count_batch",
    "count_planned",
    "plan_batch",
    "detect_shape",
    "get_tokenizer",
    "normalize_key",
    "render",
    "render_batch",
    "render_pieces",
    "render_prompt",
    "validate_conversation",
]
