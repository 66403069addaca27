"""Conversations scored per second by an evaluation job against the floor: the same SDK and fake Tinker
service (answering each logprob request in 20 ms) driven by a bare loop over prebuilt prompts, with as many
requests in flight as the job keeps. The job runs for real (claim → load → render → score → per-example rows →
artifact) in this process on SQLite.

The fake answers in this process, so both sides are bound by one GIL and this machine's CPU, whose share drifts
from one second to the next (other processes): each round runs the floor and the job back to back (alternating
which goes first), and `job_vs_floor` is the median of the rounds' ratios.
Usage: python bench/evaluation.py [--conversations 512] [--rounds 7]"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
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
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fake_tinker_env(tmp, {"sample": LATENCY_S})
        from app.chat import render

        rng = random.Random(0)
        rows = [conversation(rng) for _ in range(args.conversations)]
        artifact_id = chatml_artifact(tmp, "eval.jsonl", rows)
        prompts = [render(r["messages"]).tokens for r in rows]

        spec = {"eval_artifact": artifact_id, "max_examples": len(rows), "samples": 0}
        drive_job("evaluation", spec)  # warm-up: imports, the tokenizer, the fake's first session
        ratios, floors, jobs = [], [], []
        for n in range(args.rounds):
            def job() -> float:
                start = time.perf_counter()
                drive_job("evaluation", spec)
                return time.perf_counter() - start
            if n % 2:
                job_s, floor = job(), bare_loop_floor(prompts)
            else:
                floor, job_s = bare_loop_floor(prompts), job()
            floors.append(floor)
            jobs.append(job_s)
            ratios.append(floor / job_s)
        _, result = drive_job("evaluation", spec)

    rate, floor_rate = len(rows) / statistics.median(jobs), len(rows) / statistics.median(floors)
    tokens = sum(len(p) for p in prompts) / len(prompts)
    print(f"{len(rows)} conversations of ~{tokens:.0f} tokens, {LATENCY_S * 1000:.0f} ms per logprob request")
    print(f"evaluation job    {rate:.1f} conversations/s   (base model, mean loss {result['models'][0]['mean_loss']}, "
          f"median of {args.rounds})")
    print(f"floor             {floor_rate:.1f} conversations/s   (bare loop, same SDK, service and requests in "
          f"flight, median of {args.rounds})")
    print("job/floor per round  " + " ".join(f"{r:.3f}" for r in ratios))
    print(json.dumps({"bench": "evaluation", "conversations_per_s": round(rate, 1),
                      "floor_conversations_per_s": round(floor_rate, 1),
                      "job_vs_floor": round(statistics.median(ratios), 3), "rounds": args.rounds,
                      "job_vs_floor_min": round(min(ratios), 3), "job_vs_floor_max": round(max(ratios), 3)}))


def bare_loop_floor(prompts: list[list[int]]) -> float:
    """Seconds to score every prompt with the bare minimum: prebuilt inputs, IN_FLIGHT requests outstanding."""
    from collections import deque

    from tinker import types

    from app.settings import get_settings
    from workers.clients.tinker import make_service_client
    from workers.pipelines.eval_scoring import IN_FLIGHT

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
