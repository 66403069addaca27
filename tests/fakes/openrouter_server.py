"""A real HTTP/1.1 OpenRouter stand-in on loopback, for tests and benchmarks.

``FakeOpenRouter`` runs uvicorn (httptools when installed) with a tiny ASGI app on its own event loop in a
background thread, so it serves many slow requests concurrently without threads per request. It speaks
``POST /api/v1/chat/completions`` in the OpenAI/OpenRouter wire format, counts calls per item and can inject
latency and faults, decided by a seeded RNG per (item, attempt) so runs are reproducible.

    with FakeOpenRouter(latency=0.2, fail_rates={"429": 0.1}) as fake:
        client = OpenRouterClient(api_key="k", base_url=fake.url)

Item identity: the ``X-Tuneq-Item`` request header when present, else a hash of the request's messages.
The attempt number of a request is how many calls its item had received before it (0-based).
Counters: ``calls`` per item, ``outcomes``, ``requests`` (a log with each request's arrival time ``t``),
``in_flight``/``max_in_flight``, ``connections`` (chat requests per client connection, by its address and port)
and ``models_calls``.

Switches (constructor keywords and ``configure(**kw)`` at runtime; thread-safe):
  latency, latency_jitter   seconds before answering (jitter: +/- uniform, seeded)
  fail_rates                {"429"|"500"|"502"|"503"|"error_body"|"malformed"|"stall"|"<status>": probability}
  retry_after               Retry-After seconds sent with 429s (float allowed); None = no header
  stall_seconds             how long a "stall" sleeps before answering (ends early if the client hangs up)
  status_override           answer every request with this status and an OpenRouter-style error body
  override_message          the error message used with status_override (default: a realistic one)
  fail_first_n, fail_first_kind   the first N attempts of every item fail with this kind (default "500")
  api_key                   when set, requests with another Bearer token get a 401
  known_models              when set, other model ids get OpenRouter's 400 "is not a valid model ID"
  response_model            the model reported in responses (default: echo the requested model)
  cost_per_call             usage.cost in USD on every success
  report_cost               False: replies carry token counts but no usage.cost (any OpenAI-compatible endpoint
                            but OpenRouter)
  models                    {model id: {"prompt": USD per token, "completion": USD per token}}: served by
                            ``GET /api/v1/models`` in OpenRouter's format (pricing as strings); None: a 404
  forbidden_moderation      a 403 carries moderation metadata (True) or is a key refusal without it (False)
  content                   callable (messages, item_key, attempt) -> str; default: a JSON dialogue
  seed                      seed of the fault RNG
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
import uvicorn

from tests.fakes.openrouter_wire import (
    STATUS_MESSAGES,
    default_content,
    err_body,
    num_text,
    price_text,
    send_response,
    tokens,
)

ContentFn = Callable[[list[dict[str, Any]], str, int], str]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

ITEM_HEADER = "x-tuneq-item"
FAIL_KINDS_ORDER = ("429", "500", "502", "503", "error_body", "malformed", "stall")

_DEFAULTS: dict[str, Any] = {
    "latency": 0.0,
    "latency_jitter": 0.0,
    "fail_rates": {},
    "retry_after": 0.1,
    "stall_seconds": 30.0,
    "status_override": None,
    "override_message": None,
    "fail_first_n": 0,
    "fail_first_kind": "500",
    "api_key": None,
    "known_models": None,
    "response_model": None,
    "cost_per_call": 0.0,
    "report_cost": True,
    "models": None,
    "forbidden_moderation": True,
    "content": None,
    "seed": 0,
}


class FakeOpenRouter:
    """See the module docstring."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, max_logged_requests: int = 10_000,
                 **switches: Any) -> None:
        self.host, self._port_wanted = host, port
        self._lock = threading.Lock()
        self._initial = self._validated({**_DEFAULTS, **switches})
        self._cfg: dict[str, Any] = dict(self._initial)
        self.calls: Counter[str] = Counter()
        self.total_calls = 0
        self.outcomes: Counter[str] = Counter()  # "ok", "429", "stall", ...
        self.requests: deque[dict[str, Any]] = deque(maxlen=max_logged_requests)
        self.in_flight = 0
        self.max_in_flight = 0
        self.connections: Counter[tuple[str, int]] = Counter()
        self.models_calls = 0
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self.port = 0

    # ------------------------------------------------------------------ control (any thread)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/api/v1"

    def configure(self, **switches: Any) -> None:
        with self._lock:
            self._cfg.update(self._validated(switches))

    def reset(self, *, switches: bool = False) -> None:
        """Clear counters and the request log; with ``switches=True`` also restore the constructor switches."""
        with self._lock:
            self.calls.clear()
            self.outcomes.clear()
            self.requests.clear()
            self.total_calls = 0
            self.max_in_flight = self.in_flight
            self.connections.clear()
            self.models_calls = 0
            if switches:
                self._cfg = dict(self._initial)

    def start(self) -> FakeOpenRouter:
        if self._thread is not None:
            return self
        # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on sockets that say they are TCP, and
        # without it the separate head/body writes meet delayed ACKs (+40 ms per request).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._port_wanted))
        sock.listen(2048)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        http = "h11"
        try:
            import httptools  # noqa: F401

            http = "httptools"
        except ImportError:
            pass
        config = uvicorn.Config(self._app, interface="asgi3", proxy_headers=False, lifespan="off",
                                log_level="warning", access_log=False, http=http,
                                timeout_graceful_shutdown=2, timeout_keep_alive=30, backlog=2048)
        self._server = uvicorn.Server(config)
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            self._stopping = asyncio.Event()
            ready.set()
            try:
                assert self._server is not None
                loop.run_until_complete(self._server.serve(sockets=[sock]))
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"fake-openrouter-{self.port}", daemon=True)
        self._thread.start()
        ready.wait(5)
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake OpenRouter server did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self._thread is None or self._server is None:
            return
        self._server.should_exit = True
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stopping.set)
            except RuntimeError:
                pass
        self._thread.join(10)
        self._thread = None
        self._server = None

    def __enter__(self) -> FakeOpenRouter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _validated(switches: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(switches) - set(_DEFAULTS)
        if unknown:
            raise TypeError(f"unknown FakeOpenRouter switches: {sorted(unknown)}")
        out = dict(switches)
        if "fail_rates" in out:
            rates = {str(k): float(v) for k, v in (out["fail_rates"] or {}).items()}
            if sum(rates.values()) > 1.0 + 1e-9:
                raise ValueError("fail_rates must sum to at most 1")
            out["fail_rates"] = rates
        if "known_models" in out and out["known_models"] is not None:
            out["known_models"] = frozenset(out["known_models"])
        return out

    async def _sleep(self, seconds: float) -> None:
        """Sleep, ending early when the server stops."""
        if seconds <= 0:
            return
        assert self._stopping is not None
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _app(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        if scope["method"] == "GET" and scope["path"].rstrip("/") == "/api/v1/models":
            await self._models(send)
            return
        if scope["method"] != "POST" or scope["path"].rstrip("/") != "/api/v1/chat/completions":
            await send_response(send, 404, err_body(404, f"No route for {scope['method']} {scope['path']}"))
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        client = scope.get("client") or ("?", 0)
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.connections[(str(client[0]), int(client[1]))] += 1
        try:
            await self._chat(headers, body, receive, send)
        finally:
            with self._lock:
                self.in_flight -= 1

    async def _chat(self, headers: dict[str, str], body: bytes, receive: Receive, send: Send) -> None:
        try:
            req = orjson.loads(body)
            messages = req["messages"]
            model = str(req["model"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            req, messages, model = None, None, ""
        if messages is not None and not isinstance(messages, list):
            messages = None
        item = headers.get(ITEM_HEADER) or hashlib.sha256(
            orjson.dumps(messages, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
        with self._lock:
            cfg = dict(self._cfg)
            attempt = self.calls[item]
            self.calls[item] += 1
            self.total_calls += 1
            log_entry: dict[str, Any] = {"t": time.monotonic(), "item": item, "attempt": attempt, "headers": headers,
                                         "body": body.decode("utf-8", "replace"), "json": req}
            self.requests.append(log_entry)

        rng = random.Random(f"{cfg['seed']}:{item}:{attempt}")
        kind = self._decide(cfg, rng, attempt, headers, model, messages)
        log_entry["outcome"] = kind
        with self._lock:
            self.outcomes[kind] += 1

        delay = cfg["latency"]
        if cfg["latency_jitter"]:
            delay = max(0.0, delay + rng.uniform(-cfg["latency_jitter"], cfg["latency_jitter"]))
        await self._sleep(delay)

        if kind == "ok":
            assert messages is not None
            content_fn: ContentFn = cfg["content"] or default_content
            content = content_fn(messages, item, attempt)
            prompt_tokens = sum(tokens(str(m.get("content", ""))) for m in messages if isinstance(m, dict))
            completion_tokens = tokens(content)
            resp = {
                "id": f"gen-{item}-{attempt}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": cfg["response_model"] or model,
                "provider": "FakeProvider",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop", "native_finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens},
            }
            if cfg["report_cost"]:
                resp["usage"]["cost"] = float(cfg["cost_per_call"])
            await send_response(send, 200, orjson.dumps(resp))
        elif kind == "error_body":
            await send_response(send, 200, orjson.dumps({"error": {"code": 502, "message": "upstream error"}}))
        elif kind == "malformed":
            await send_response(send, 200, b"<html><body>502 Bad Gateway</body></html>", content_type="text/html")
        elif kind == "stall":
            await self._stall(cfg["stall_seconds"], receive)
            await send_response(send, 200, b"{}")  # too late for any client with a sane timeout
        elif kind == "bad_model":
            await send_response(send, 400, err_body(400, f"{model} is not a valid model ID"))
        elif kind == "bad_request":
            await send_response(send, 400, err_body(400, "Invalid request body: expected 'model' and 'messages'"))
        else:  # an HTTP status
            status = int(kind)
            extra: list[tuple[bytes, bytes]] = []
            if status == 429 and cfg["retry_after"] is not None:
                extra.append((b"retry-after", num_text(cfg["retry_after"]).encode()))
            message = (cfg["override_message"] if cfg["status_override"] is not None else None) \
                or STATUS_MESSAGES.get(status, "Error")
            meta = {"reasons": ["harassment"], "flagged_input": "...", "provider_name": "FakeProvider",
                    "model_slug": model} if status == 403 and cfg["forbidden_moderation"] else None
            if status == 403 and not cfg["forbidden_moderation"] and cfg["override_message"] is None:
                message = "This API key is not permitted to use this model"
            await send_response(send, status, err_body(status, message, meta), extra)

    async def _models(self, send: Send) -> None:
        with self._lock:
            self.models_calls += 1
            models = self._cfg["models"]
        if models is None:
            await send_response(send, 404, err_body(404, "No route for GET /api/v1/models"))
            return
        data = [{"id": model, "canonical_slug": model, "name": model, "context_length": 131072,
                 "pricing": {"prompt": price_text(p["prompt"]), "completion": price_text(p["completion"]), "request": "0",
                             "image": "0"}} for model, p in models.items()]
        await send_response(send, 200, orjson.dumps({"data": data}))

    def _decide(self, cfg: dict[str, Any], rng: random.Random, attempt: int, headers: dict[str, str],
                model: str, messages: Any) -> str:
        if cfg["status_override"] is not None:
            return str(int(cfg["status_override"]))
        if cfg["api_key"] is not None and headers.get("authorization") != f"Bearer {cfg['api_key']}":
            return "401"
        if messages is None or not model:
            return "bad_request"
        if cfg["known_models"] is not None and model not in cfg["known_models"]:
            return "bad_model"
        if attempt < cfg["fail_first_n"]:
            return str(cfg["fail_first_kind"])
        u = rng.random()
        acc = 0.0
        rates: dict[str, float] = cfg["fail_rates"]
        for k in (*FAIL_KINDS_ORDER, *sorted(set(rates) - set(FAIL_KINDS_ORDER))):
            acc += rates.get(k, 0.0)
            if u < acc:
                return k
        return "ok"

    async def _stall(self, seconds: float, receive: Receive) -> None:
        """Sleep ``seconds`` but stop early when the client disconnects or the server stops."""
        assert self._stopping is not None
        waits = [asyncio.ensure_future(receive()), asyncio.ensure_future(self._stopping.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the fake OpenRouter server standalone (for benchmarks).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--cost", type=float, default=0.0001, help="usage.cost per successful call (USD)")
    parser.add_argument("--fail-429", type=float, default=0.0)
    parser.add_argument("--fail-500", type=float, default=0.0)
    parser.add_argument("--retry-after", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    fake = FakeOpenRouter(host=args.host, port=args.port, latency=args.latency, cost_per_call=args.cost,
                          fail_rates={"429": args.fail_429, "500": args.fail_500}, retry_after=args.retry_after,
                          seed=args.seed, max_logged_requests=1000)
    with fake:
        print(f"fake OpenRouter listening at {fake.url} (latency {args.latency}s); Ctrl+C to stop", flush=True)
        try:
            while True:
                time.sleep(5)
                print(f"total calls: {fake.total_calls}, max in flight: {fake.max_in_flight}", flush=True)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
