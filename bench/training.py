"""Seconds per training step against the server-side floor, with realistic batches (128 conversations of
~1k tokens) and the fake Tinker service answering forward_backward in 150 ms and optim_step in 30 ms.
The job runs for real (claim → render → datums → SDK futures → checkpoints) in this process on SQLite.

`auto_eval_vs_off`: training steps per second with `auto_eval` on ÷ off, the same data and checkpoints
(sampler weights every 2 steps, scored on 32 validation conversations, compute_logprobs answering in
SAMPLE_S), alternating off/on rounds, median of each. Target ≥ 0.9.
Usage: python bench/training.py [--steps 12] [--rounds 3]"""

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

FB_S, OPT_S, BATCH = float(os.environ.get("FB_S", 0.150)), float(os.environ.get("OPT_S", 0.030)), 128
SAMPLE_S, SAVE_S = float(os.environ.get("SAMPLE_S", 0.100)), float(os.environ.get("SAVE_S", 0.020))
VALIDATION = 32
WORDS = ("the mentor asks which step comes next so that the student can find the answer on their own while "
         "checking each fraction loop proof and graph carefully before moving on to the next idea").split()


def conversation(rng: random.Random) -> dict:
    """About 1,000 tokens: a short question, a long scaffolded answer, a follow-up and a reply."""
    def text(n: int) -> str:
        return " ".join(rng.choices(WORDS, k=n))
    return {"messages": [{"role": "user", "content": text(60)}, {"role": "assistant", "content": text(420)},
                         {"role": "user", "content": text(40)}, {"role": "assistant", "content": text(300)}]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fake_tinker_env(tmp, {"forward_backward": FB_S, "optim_step": OPT_S, "sample": SAMPLE_S, "save": SAVE_S})
        from app.chat import count_batch
        from app.schemas.training import TrainingSpec
        from workers.pipelines.training import _datums

        rng = random.Random(0)
        rows = [conversation(rng) for _ in range(BATCH * args.steps)]
        artifact_id = chatml_artifact(tmp, "train.jsonl", rows)
        tokens = [n for n, _ in count_batch([r["messages"] for r in rows])]

        # Client-side work per batch, measured alone: render 128 conversations and build their Datums.
        spec = TrainingSpec(train_artifact="x", batch_size=BATCH)
        messages = [r["messages"] for r in rows[:BATCH]]
        prep = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            _datums(spec, messages, range(BATCH))
            prep = min(prep, time.perf_counter() - start)

        floor = tight_loop_floor(_datums(spec, messages, range(BATCH)).datums, args.steps)

        _, result = drive_job("training", {"train_artifact": artifact_id, "batch_size": BATCH,
                                           "max_steps": args.steps, "save_every": 1000, "max_length": 4096})

        validation_id = chatml_artifact(tmp, "validation.jsonl", [conversation(rng) for _ in range(VALIDATION)])
        per_step: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for auto_eval in (False, True):  # alternating: drift of the machine hits both alike
                _, run = drive_job("training", {
                    "train_artifact": artifact_id, "validation_artifact": validation_id, "auto_eval": auto_eval,
                    "batch_size": BATCH, "max_steps": args.steps, "save_every": 2, "eval_every": 0,
                    "max_length": 4096})
                assert not auto_eval or run["best_checkpoint"] is not None
                per_step[auto_eval].append(run["seconds_per_step"])
        off, on = statistics.median(per_step[False]), statistics.median(per_step[True])

    s_per_step = result["seconds_per_step"]
    nominal = FB_S + OPT_S
    print(f"batch: {BATCH} conversations, mean {sum(tokens) / len(tokens):.0f} tokens "
          f"({sum(tokens[:BATCH])} per batch)")
    print(f"seconds per step   {s_per_step:.3f}   floor {floor:.3f}   ratio {s_per_step / floor:.3f}  "
          f"({args.steps} steps)")
    print(f"  floor = the same SDK and service driven by a bare loop of prebuilt batches (latency "
          f"{nominal:.3f} s + transport + the fake's own compute); vs latency alone: {s_per_step / nominal:.3f}")
    print(f"render + datum build per batch (client work hidden behind the remote call)  {prep:.3f} s")
    print(f"auto_eval on/off: steps/s ratio {off / on:.3f}  (s/step median on {on:.3f}, off {off:.3f}; "
          f"{args.rounds} rounds each, sampler weights every 2 steps, {VALIDATION} validation conversations)")
    print(json.dumps({"bench": "training", "s_per_step": round(s_per_step, 4), "floor_s_per_step": round(floor, 4),
                      "step_vs_floor": round(s_per_step / floor, 3), "prep_s_per_batch": round(prep, 4),
                      "latency_s_per_step": nominal, "step_vs_latency": round(s_per_step / nominal, 3),
                      "auto_eval_vs_off": round(off / on, 3), "auto_eval_s_per_step": round(on, 4),
                      "auto_eval_off_s_per_step": round(off, 4)}))


def tight_loop_floor(datums: list, steps: int) -> float:
    """Seconds per step of the bare minimum: prebuilt datums, forward_backward + optim_step, wait, repeat."""
    from tinker import types

    from app.settings import get_settings
    from workers.clients.tinker import make_service_client

    client = make_service_client(get_settings()).create_lora_training_client(base_model="Qwen/Qwen3-8B").result()
    client.forward_backward(datums, "cross_entropy").result()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        fb = client.forward_backward(datums, "cross_entropy")
        opt = client.optim_step(types.AdamParams(learning_rate=1e-4))
        fb.result()
        opt.result()
    return (time.perf_counter() - start) / steps


if __name__ == "__main__":
    main()
