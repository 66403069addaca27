"""Try a checkpoint: one reply to a ChatML conversation, sampled from a checkpoint's sampler weights or from a
base model, rendered and parsed with the same Qwen3 renderer training uses (app/chat).

It runs in the API process, so the Tinker client comes from the shared factory (app/tinker_factory.py). Every
Tinker call runs on this module's own threads, never on the event loop, and the whole reply is bounded by
`chat_timeout_seconds` (a 504 past it). Sampling clients are kept per weights path, the most recent few, so a
conversation of several turns opens its sampler once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session
from tinker import types

from app import tinker_factory
from app.chat import get_tokenizer, render_prompt, validate_conversation
from app.chat.tokenizer import ENDOFTEXT, IM_END
from app.errors import InvalidRequest, NotFound, ServiceUnavailable, TuneqError
from app.schemas.chat import ChatRequest
from app.services import training as training_service
from app.settings import Settings
from app.tinker_errors import classify_error, from_tinker

SAMPLERS_KEPT = 8  # sampling clients kept open per API process (least recently used goes first)
CHAT_THREADS = 8  # replies sampled at once per API process; more wait their turn (within their timeout)


class ChatTimeout(TuneqError):
    status, code, title = 504, "chat_timeout", "The reply took too long"


class NoSamplerWeights(InvalidRequest):
    code = "no_sampler_weights"


@dataclass(frozen=True)
class Target:
    """What answers: a checkpoint's sampler weights (`sampler_path`) or a base model (`base_model`)."""

    model: str  # as the response names it: the checkpoint id, or the base model
    sampler_path: str | None = None
    base_model: str | None = None


def resolve(session: Session, *, team_id: str, ref: str, settings: Settings) -> Target:
    """A base model this server supports, or a checkpoint of the team (its id or a tinker:// path) that has
    sampler weights. Another team's checkpoint is a 404, as a missing one is."""
    if ref in settings.supported_base_models:
        return Target(model=ref, base_model=ref)
    if "/" in ref and not ref.startswith("tinker://"):
        raise NotFound(f"{ref} is neither a checkpoint of your team nor a base model this server supports "
                       f"({', '.join(settings.supported_base_models)}).")
    paths = training_service.checkpoint_paths(session, team_id=team_id, ref=ref)
    if paths.sampler_path is None:
        raise NoSamplerWeights(
            f"Checkpoint {paths.id} (step {paths.step}) has no sampler weights, only its training state, so it cannot "
            "answer. Chat with a checkpoint whose sampler_uri is set (GET /v1/jobs/{id}/checkpoints); the training "
            "job's sampler_every decides which steps save them.",
            errors=[{"loc": ["path", "ref"], "msg": "no sampler weights"}])
    return Target(model=paths.id, sampler_path=paths.sampler_path)


def check_messages(messages: list[dict[str, Any]]) -> None:
    """app/chat's rules for a conversation, except that it ends with the user turn the reply answers."""
    last = messages[-1].get("role") if isinstance(messages[-1], dict) else None
    if last != "user":
        raise InvalidRequest(f"messages[{len(messages) - 1}].role: the last message must be the user's turn to "
                             f"answer, got {last!r}.",
                             errors=[{"loc": ["body", "messages", len(messages) - 1, "role"], "msg": "not user"}])
    problem = validate_conversation([*messages, {"role": "assistant", "content": "reply"}])
    if problem is not None:
        loc = ["body", *problem.field.replace("[", ".").replace("]", "").split(".")]
        raise InvalidRequest(f"{problem.field}: {problem.message}.",
                             errors=[{"loc": [int(p) if p.isdigit() else p for p in loc], "msg": problem.reason}])


def split_thinking(text: str) -> tuple[str | None, str]:
    """(reasoning, answer) of a Qwen3 reply, by the renderer's rule (app/chat/render.py): the reasoning is the
    text before `</think>` (after `<think>`), the answer what follows it. A reply cut off while still thinking
    has no answer yet. An empty think block is no reasoning."""
    if "</think>" in text:
        thinking = text.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
        content = text.split("</think>")[-1].lstrip("\n")
    elif text.lstrip().startswith("<think>"):
        thinking, content = text.lstrip().removeprefix("<think>").lstrip("\n"), ""
    else:
        thinking, content = "", text
    return (thinking.strip("\n") or None), content


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(found)], True) if found else (text, False)


def _tinker_problem(exc: BaseException) -> TuneqError:
    """How a failed Tinker call answers (app/tinker_errors.py): the request's fault is a 422, anything else a 503
    to retry."""
    message = str(exc)[:300] or type(exc).__name__
    if classify_error(exc) == "user":
        return InvalidRequest(f"Tinker rejected the request: {message}")
    failure = ServiceUnavailable(f"Tinker could not answer ({type(exc).__name__}: {message}); retry shortly.")
    failure.retry_after = 5
    return failure


class ChatSampler:
    """This API process's Tinker client, its recent sampling clients, and the threads replies are sampled on.
    Built in create_app (no I/O); the Tinker client is made on the first reply, on a chat thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._threads = ThreadPoolExecutor(max_workers=CHAT_THREADS, thread_name_prefix="chat")
        self._lock = threading.Lock()
        self._service: Any = None
        self._samplers: OrderedDict[str, Any] = OrderedDict()

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def reply(self, target: Target, request: ChatRequest) -> dict[str, Any]:
        """The reply, sampled on a chat thread; 504 past `chat_timeout_seconds`, 503 without Tinker."""
        if not tinker_factory.configured(self.settings):
            raise ServiceUnavailable("Chat needs Tinker, which this server is not configured for: an operator must "
                                     "set TINKER_API_KEY for the API processes.")
        timeout = self.settings.chat_timeout_seconds
        deadline = time.monotonic() + timeout
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self._threads, self._reply, target, request, deadline)
        try:
            return await asyncio.wait_for(work, timeout)
        except (TimeoutError, FutureTimeout):
            raise ChatTimeout(f"The reply took longer than {timeout:g} s (TUNEQ_CHAT_TIMEOUT_SECONDS), so it was "
                              "abandoned; retry, or ask for fewer max_tokens.") from None

    def _reply(self, target: Target, request: ChatRequest, deadline: float) -> dict[str, Any]:
        prompt = render_prompt(request.messages, enable_thinking=request.enable_thinking)
        params = types.SamplingParams(max_tokens=request.max_tokens, temperature=request.temperature,
                                      top_p=request.top_p, seed=request.seed, stop=[IM_END])
        try:
            sampler = self._sampler(target, deadline)
            result = sampler.sample(types.ModelInput.from_ints(prompt), 1, params).result(
                timeout=max(0.0, deadline - time.monotonic()))
        except (TimeoutError, FutureTimeout):
            raise ChatTimeout("The reply took too long (TUNEQ_CHAT_TIMEOUT_SECONDS).") from None
        except tinker_factory.NotConfigured as exc:
            raise ServiceUnavailable(f"Chat cannot reach Tinker: {exc}") from None
        except Exception as exc:
            if not from_tinker(exc):
                raise  # a bug of ours: the handlers answer 500
            raise _tinker_problem(exc) from None
        sequence = result.sequences[0]
        text = get_tokenizer().decode([t for t in sequence.tokens if t not in (IM_END, ENDOFTEXT)])
        text, stopped = _cut_at_stop(text, request.stop)
        thinking, content = split_thinking(text)
        return {"model": target.model,
                "message": {"role": "assistant", "content": content, "thinking": thinking},
                "finish_reason": "stop" if stopped or sequence.stop_reason == "stop" else "length",
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(sequence.tokens)}}

    def _sampler(self, target: Target, deadline: float) -> Any:
        key = target.sampler_path or f"base:{target.base_model}"
        with self._lock:
            if key in self._samplers:
                self._samplers.move_to_end(key)
                return self._samplers[key]
            if self._service is None:
                self._service = tinker_factory.make_service_client(self.settings)
            service = self._service
        if target.sampler_path is not None:
            future = service.create_sampling_client(model_path=target.sampler_path)
        else:
            future = service.create_sampling_client(base_model=target.base_model)
        sampler = future.result(timeout=max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._samplers[key] = sampler
            while len(self._samplers) > SAMPLERS_KEPT:
                self._samplers.popitem(last=False)
        return sampler
