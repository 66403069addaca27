"""Dataset job throughput against raw tokenization of the same text, the encoder against Hugging Face
`tokenizers`, the same rows as a three-source mix (two uploads and a local Parquet directory) against the
encoder too, and peak RSS converting 1,000,000 rows. Usage: python bench/dataset.py [--rows 20000]

The job runs for real (claim → pipeline → artifacts → succeeded) in this process on SQLite, so its figure
includes reading, shape conversion, validation, rendering, dedupe, splitting and atomic writes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = ("the model learns from each turn while gradients flow through low rank adapters and a mentor asks "
         "which step comes next so that students reason about fractions, loops, proofs, 42 cases, "
         "naïve café résumé 数据 集 😀 def f(x): return x**2 + 1").split()


def make_rows(path: Path, n: int, words_per_turn: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "wb") as f:
        for i in range(n):
            turns = []
            for t in range(2):
                turns.append({"role": "user", "content": f"[{i}.{t}] " + " ".join(rng.choices(WORDS, k=words_per_turn))})
                turns.append({"role": "assistant", "content": " ".join(rng.choices(WORDS, k=words_per_turn * 2))})
            f.write(orjson.dumps({"messages": turns}) + b"\n")


def run_job(var: Path, data: Path) -> tuple[dict, float]:
    """One upload, one dataset job. Returns the job result and the seconds the job itself took."""
    return drive_job(var, [data], lambda ids: {
        "source": {"type": "artifact", "artifact_id": ids[0]}, "shape": "messages", "validation_rows": 100})


def run_mixed_job(var: Path, data: Path) -> tuple[dict, float]:
    """The same rows as three sources mixed by weight: two uploads (ChatML JSONL, and ShareGPT JSONL) and a local
    directory (Parquet), a third of the rows each, weights 1:1:1 so every row is kept."""
    rows = [orjson.loads(line) for line in open(data, "rb")]
    third = len(rows) // 3
    parts = [rows[:third], rows[third:2 * third], rows[2 * third:]]
    first, second = var.parent / f"{var.name}-a.jsonl", var.parent / f"{var.name}-b.jsonl"
    first.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in parts[0]))
    sharegpt = [{"conversations": [{"from": {"user": "human", "assistant": "gpt"}[m["role"]], "value": m["content"]}
                                   for m in r["messages"]]} for r in parts[1]]
    second.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in sharegpt))
    local = var / "datasets" / "mixed"  # under TUNEQ_LOCAL_DATASETS_DIR
    (local / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(parts[2]), local / "data" / "train-00000-of-00001.parquet")
    n = [len(p) for p in parts]
    return drive_job(var, [first, second], lambda ids: {"sources": [
        {"type": "artifact", "artifact_id": ids[0], "shape": "messages", "weight": n[0]},
        {"type": "artifact", "artifact_id": ids[1], "shape": "sharegpt", "weight": n[1]},
        {"type": "local", "path": "mixed", "shape": "messages", "weight": n[2]},
    ], "validation_rows": 100})


def drive_job(var: Path, uploads: list[Path], spec_of: Callable[[list[str]], dict]) -> tuple[dict, float]:
    """Create upload artifacts and a dataset job for them (local sources live under var/datasets), then drive the
    job in this process. Returns the job result and the seconds the job itself took (set-up excluded)."""
    os.environ.update({"TUNEQ_VAR_DIR": str(var), "TUNEQ_DATABASE_URL": f"sqlite:///{var / 'bench.db'}",
                       "TUNEQ_BROKER_URL": "redis://127.0.0.1:1/0", "TUNEQ_HEARTBEAT_SECONDS": "5",
                       "TUNEQ_LOCAL_DATASETS_DIR": str(var / "datasets")})
    from app.db import reset_engine, session_scope
    from app.migrate import upgrade
    from app.settings import get_settings

    get_settings.cache_clear()
    reset_engine()
    from app.models import Artifact, Job
    from app.services import auth
    from workers.tasks import drive

    var.mkdir(parents=True, exist_ok=True)
    (var / "datasets").mkdir(exist_ok=True)
    upgrade(os.environ["TUNEQ_DATABASE_URL"])
    with session_scope() as session:
        team = auth.get_or_create_team(session, "bench")
        ids = []
        for i, data in enumerate(uploads):
            target = var / "artifacts" / f"upload-{i}.jsonl"
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(data, target)
            art = Artifact(team_id=team.id, kind="upload", name=data.name, uri=target.name, format="jsonl")
            session.add(art)
            session.flush()
            ids.append(art.id)
        job = Job(team_id=team.id, kind="dataset", status="queued", spec=spec_of(ids))
        session.add(job)
        session.flush()
        job_id = job.id
    start = time.perf_counter()
    drive(job_id)
    seconds = time.perf_counter() - start
    with session_scope() as session:
        done = session.get(Job, job_id)
        assert done is not None and done.status == "succeeded", done.error if done else None
        return done.result or {}, seconds


def rss_child(rows: int) -> None:
    """Run in a subprocess: generate `rows` rows, convert them, print peak RSS of the conversion."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "rows.jsonl"
        make_rows(data, rows, words_per_turn=6, seed=rows)
        base = _peak_rss_kb()
        result, _ = run_job(Path(tmp) / "var", data)
        peak = _peak_rss_kb()
        print(json.dumps({"rows": result["rows_out"], "peak_rss_mb": round(peak / 1024, 1),
                          "before_job_mb": round(base / 1024, 1)}))


def _peak_rss_kb() -> int:
    """This process's peak RSS (VmHWM; unlike ru_maxrss it does not inherit the parent's peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure_rss(rows: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--rss-child", str(rows)], check=True, capture_output=True,
                         text=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rss-rows", type=int, default=1_000_000)
    parser.add_argument("--rss-child", type=int, default=0)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child)
        return

    from app.chat.tokenizer import build_hf_tokenizer, get_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "rows.jsonl"
        make_rows(data, args.rows, words_per_turn=40)
        texts = [m["content"] for line in open(data, "rb") for m in orjson.loads(line)["messages"]]
        tok = get_tokenizer()

        # Best of three for the jobs and for the encoder alike: this machine's speed drifts between runs, so the
        # single-source and the mixed job take turns.
        job_s = mixed_s = float("inf")
        for attempt in range(3):
            result, seconds = run_job(Path(tmp) / f"var{attempt}", data)
            job_s = min(job_s, seconds)
            mixed, seconds = run_mixed_job(Path(tmp) / f"mixed{attempt}", data)
            mixed_s = min(mixed_s, seconds)
        job_tokens = result["splits"]["train"]["tokens"] + result["splits"]["validation"]["tokens"]
        assert mixed["rows_out"] == result["rows_out"], (mixed["rows_out"], result["rows_out"])

        encoder_s = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            encoded = tok.encode_batch(texts)
            encoder_s = min(encoder_s, time.perf_counter() - start)
        content_tokens = sum(map(len, encoded))

        # The encoder against Hugging Face `tokenizers`, one thread each, same texts, same ids.
        hf = build_hf_tokenizer()
        sample = texts[: len(texts) // 4]
        ours_single_s = hf_single_s = float("inf")
        for _ in range(3):  # interleaved, best of three: this machine's speed drifts between runs
            start = time.perf_counter()
            ours = [tok.encode(t) for t in sample]
            ours_single_s = min(ours_single_s, time.perf_counter() - start)
            start = time.perf_counter()
            theirs = [hf.encode(t, add_special_tokens=False).ids for t in sample]
            hf_single_s = min(hf_single_s, time.perf_counter() - start)
        assert ours == theirs, "the two tokenizers disagree"
        sample_tokens = sum(map(len, ours))

    rows_per_s = result["rows_out"] / job_s
    tokens_per_s = content_tokens / job_s  # the same text the encoder sees, so the ratio compares like with like
    encoder_tps = content_tokens / encoder_s
    single_tps, hf_tps = sample_tokens / ours_single_s, sample_tokens / hf_single_s
    print(f"dataset job      {rows_per_s:9.0f} rows/s  {tokens_per_s / 1e6:6.2f} M content tokens/s  "
          f"({result['rows_out']} rows, {job_tokens} rendered tokens, {job_s:.2f} s)")
    print(f"mixed job, 3 sources {result['rows_out'] / mixed_s:5.0f} rows/s  "
          f"{content_tokens / mixed_s / 1e6:6.2f} M content tokens/s  ({mixed_s:.2f} s)")
    print(f"encoder (tiktoken, Qwen3 ranks), batch on all cores   {encoder_tps / 1e6:6.2f} M tokens/s")
    print(f"encoder, one thread                                   {single_tps / 1e6:6.2f} M tokens/s")
    print(f"Hugging Face tokenizers, one thread (same ids)        {hf_tps / 1e6:6.2f} M tokens/s")

    small = measure_rss(args.rss_rows // 4)
    big = measure_rss(args.rss_rows)
    print(f"peak RSS  {small['rows']:>8} rows: {small['peak_rss_mb']} MB   {big['rows']:>8} rows: "
          f"{big['peak_rss_mb']} MB  (process before the job: {big['before_job_mb']} MB)")
    print(json.dumps({"bench": "dataset", "rows_per_s": round(rows_per_s), "tokens_per_s": round(tokens_per_s),
                      "encoder_tokens_per_s": round(encoder_tps), "job_vs_encoder": round(tokens_per_s / encoder_tps, 3),
                      "mixed_job_vs_encoder": round(content_tokens / mixed_s / encoder_tps, 3),
                      "hf_tokens_per_s": round(hf_tps), "encoder_single_thread_tokens_per_s": round(single_tps),
                      "encoder_vs_hf": round(single_tps / hf_tps, 2),
                      "peak_rss_mb_1m_rows": big["peak_rss_mb"], "peak_rss_mb_quarter_rows": small["peak_rss_mb"]}))


if __name__ == "__main__":
    main()
