"""Generation throughput against the ideal, and rate limiting accuracy (a job's own requests_per_second, and
the provider key's rate shared through Redis), in one run against the loopback OpenRouter stand-in with
200 ms latency. The job runs for real (claim → pipeline → items → artifact) in this process on SQLite.
Usage: python bench/generation.py [--items 960]"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import drive_job  # noqa: E402

KEY = "sk-or-bench"
KEY_RPS = 100


def completion_rate(job_id: str) -> float:
    """Items finished per second in steady state, from the items' own timestamps."""
    from sqlalchemy import func, select

    from app.db import session_scope
    from app.models import GenerationItem

    with session_scope() as session:
        n, first, last = session.execute(select(func.count(), func.min(GenerationItem.updated_at),
                                                func.max(GenerationItem.updated_at))
                                         .where(GenerationItem.job_id == job_id)).one()
    return (n - 1) / (last - first).total_seconds()


def run_job(spec: dict) -> tuple[dict, float]:
    """Run one generation job in this process; returns its result and its items/s."""
    job_id, result = drive_job("generation", spec)
    return result, completion_rate(job_id)


def key_limited(tmp: Path, spec: dict) -> float:
    """Items/s of a job whose provider key is paced at KEY_RPS through a private redis-server."""
    from app.settings import get_settings
    from tests.support import free_port, start_redis_server

    port = free_port()
    redis = start_redis_server(port, tmp / "redis")
    old = {k: os.environ.get(k) for k in ("TUNEQ_BROKER_URL", "TUNEQ_OPENROUTER_REQUESTS_PER_SECOND")}
    os.environ.update({"TUNEQ_BROKER_URL": f"redis://127.0.0.1:{port}/0",
                       "TUNEQ_OPENROUTER_REQUESTS_PER_SECOND": str(KEY_RPS)})
    get_settings.cache_clear()
    try:
        return run_job(spec)[1]
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()
        redis.terminate()
        redis.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=960)
    parser.add_argument("--rps-items", type=int, default=300)
    args = parser.parse_args()
    port = 18089
    # The stand-in runs in its own process, so it does not share this process's GIL with the job.
    server = subprocess.Popen([sys.executable, "-m", "tests.fakes.openrouter_server", "--port", str(port),
                               "--latency", "0.2", "--cost", "0"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and "listening" in server.stdout.readline()
        with tempfile.TemporaryDirectory() as tmp:
            os.environ.update({"TUNEQ_VAR_DIR": tmp, "TUNEQ_DATABASE_URL": f"sqlite:///{tmp}/bench.db",
                               "TUNEQ_BROKER_URL": "redis://127.0.0.1:1/0", "OPENROUTER_API_KEY": KEY,
                               "TUNEQ_OPENROUTER_BASE_URL": f"http://127.0.0.1:{port}/api/v1",
                               "TUNEQ_LOG_LEVEL": "WARNING"})
            from app.migrate import upgrade

            upgrade(os.environ["TUNEQ_DATABASE_URL"])
            base = {"model": "moonshotai/kimi-k2", "prompt": "Item {{ index }}", "output": "completion"}
            # 1. Concurrency 32 against 200 ms latency: the ideal is 32 / 0.2 = 160 items/s.
            result, items_per_s = run_job({**base, "count": args.items, "concurrency": 32})
            assert result["ok"] == args.items, result
            # 2. requests_per_second=50 with plenty of concurrency: the limiter sets the pace.
            _, rps = run_job({**base, "count": args.rps_items, "concurrency": 32, "requests_per_second": 50})
            # 3. The key's rate (TUNEQ_OPENROUTER_REQUESTS_PER_SECOND=100), paced through a private Redis.
            key_rps = key_limited(Path(tmp), {**base, "count": args.rps_items, "concurrency": 32})
    finally:
        server.terminate()
        server.wait()
    ideal = 32 / 0.2

    print(f"concurrency 32, 200 ms latency   {items_per_s:7.1f} items/s   ideal {ideal:.0f}   "
          f"ratio {items_per_s / ideal:.3f}   ({args.items} items)")
    print(f"requests_per_second=50           {rps:7.2f} requests/s achieved  ({args.rps_items} items)")
    print(f"key rate 100/s (Redis)           {key_rps:7.2f} requests/s achieved  ({args.rps_items} items)")
    print(json.dumps({"bench": "generation", "items_per_s": round(items_per_s, 1), "ideal_per_s": ideal,
                      "vs_ideal": round(items_per_s / ideal, 3), "rps_target": 50, "rps_achieved": round(rps, 2),
                      "key_rps_target": KEY_RPS, "key_rps_achieved": round(key_rps, 2)}))


if __name__ == "__main__":
    main()
