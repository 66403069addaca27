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

# The version of what `render` produces (tokens and loss weights, including the tokenizer it uses). Bump it with
# any change to app/chat/render.py or app/chat/tokenizer.py that changes its output: a training run pins it in
# its checkpoints' plan, and refuses to resume across a change (workers/pipelines/training.py, `plan_changed`).
RENDERER_VERSION = 1

__all__ = [
    "RENDERER_VERSION",
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
