"""Conversations scored per second by an evaluation job against the floor: the same SDK and fake Tinker
service (answering each logprob request in 20 ms) driven by a bare loop over prebuilt prompts, with as many
requests in flight as the job keeps. The job runs for real (claim → load → render → score → artifact) in this
process on SQLite. Usage: python bench/evaluation.py [--conversations 512]"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import chatml_artifact, drive_job, fake_tinker_env  # noqa: E402
from bench.training import conversation  # noqa: E402

LATENCY_S = float(os.environ.get("SAMPLE_S", 0.020))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conversations", type=int, default=512)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fake_tinker_env(tmp, {"sample": LATENCY_S})
        from app.chat import render

        rng = random.Random(0)
        rows = [conversation(rng) for _ in range(args.conversations)]
        artifact_id = chatml_artifact(tmp, "eval.jsonl", rows)
        prompts = [render(r["messages"]).tokens for r in rows]

        # Alternating rounds, best of three each: this machine's speed drifts from one minute to the next.
        floor = job_s = float("inf")
        for _ in range(3):
            floor = min(floor, bare_loop_floor(prompts))
            start = time.perf_counter()
            _, result = drive_job("evaluation", {"eval_artifact": artifact_id, "max_examples": len(rows),
                                                 "samples": 0})
            job_s = min(job_s, time.perf_counter() - start)

    rate, floor_rate = len(rows) / job_s, len(rows) / floor
    tokens = sum(len(p) for p in prompts) / len(prompts)
    print(f"{len(rows)} conversations of ~{tokens:.0f} tokens, {LATENCY_S * 1000:.0f} ms per logprob request")
    print(f"evaluation job    {rate:.1f} conversations/s   (base model, mean loss {result['models'][0]['mean_loss']}, "
          "best of 3)")
    print(f"floor             {floor_rate:.1f} conversations/s   (bare loop, same SDK, service and requests in "
          "flight, best of 3)")
    print(json.dumps({"bench": "evaluation", "conversations_per_s": round(rate, 1),
                      "floor_conversations_per_s": round(floor_rate, 1), "job_vs_floor": round(rate / floor_rate, 3)}))


def bare_loop_floor(prompts: list[list[int]]) -> float:
    """Seconds to score every prompt with the bare minimum: prebuilt inputs, IN_FLIGHT requests outstanding."""
    from collections import deque

    from tinker import types

    from app.settings import get_settings
    from workers.clients.tinker import make_service_client
    from workers.pipelines.evaluation import IN_FLIGHT

    client = make_service_client(get_settings()).create_sampling_client(base_model="Qwen/Qwen3-8B").result()
    inputs = [types.ModelInput.from_ints(p) for p in prompts]
    client.compute_logprobs(inputs[0]).result()  # warm-up
    start = time.perf_counter()
    window: deque = deque()
    for x in inputs:
        if len(window) == IN_FLIGHT:
            window.popleft().result()
        window.append(client.compute_logprobs(x))
    for f in window:
        f.result()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
