"""POST → running latency, and test-job lifecycle throughput against raw Celery no-op throughput,
in one run, on PostgreSQL and Redis. Usage: python bench/dispatch.py [--jobs 300]"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import fresh_postgres, post_many  # noqa: E402

BROKER = os.environ.get("TUNEQ_BENCH_BROKER_URL", "redis://127.0.0.1:6379/9")
CONCURRENCY = "2"


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def _worker(app: str, queues: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    proc = _spawn([sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queues, "-c", CONCURRENCY,
                   "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"],
                  env, log)
    time.sleep(4)  # start-up; WARNING level prints no "ready" line
    return proc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--latency-samples", type=int, default=100)
    args = parser.parse_args()

    db_url = fresh_postgres()
    env = {**os.environ, "TUNEQ_DATABASE_URL": db_url, "TUNEQ_BROKER_URL": BROKER, "TUNEQ_ENABLE_TEST_JOBS": "1",
           "TUNEQ_LOG_LEVEL": "WARNING"}
    os.environ.update(env)
    redis.Redis.from_url(BROKER).flushdb()
    from sqlalchemy import func, select

    from app.db import session_scope
    from app.migrate import upgrade
    from app.models import Job
    from app.services import auth

    upgrade(db_url)
    with session_scope() as session:
        team = auth.get_or_create_team(session, "bench")
        _, key = auth.create_key(session, team_id=team.id)
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    port = 8766
    api = _spawn([sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--port", str(port),
                  "--log-level", "warning", "--no-access-log"], env, logs / "bench-dispatch-api.log")
    procs = [api]
    try:
        base = f"http://127.0.0.1:{port}"
        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        for _ in range(100):
            try:
                client.get("/healthz")
                break
            except httpx.HTTPError:
                time.sleep(0.1)

        # 1. Raw Celery: no-op tasks through the same broker, same worker settings.
        noop_worker = _worker("bench.noop_app", "noop", env, logs / "bench-dispatch-noop.log")
        procs.append(noop_worker)
        from bench.noop_app import noop_app

        counter = redis.Redis.from_url(BROKER)
        counter.delete("bench:noop:done")
        start = time.perf_counter()
        for _ in range(args.jobs):
            noop_app.send_task("bench.noop", queue="noop")
        while int(counter.get("bench:noop:done") or 0) < args.jobs:
            time.sleep(0.005)
        noop_per_s = args.jobs / (time.perf_counter() - start)
        noop_worker.terminate()
        noop_worker.wait()

        # 2. POST → running latency, one job at a time on an idle worker.
        procs.append(_worker("workers.celery_app", "test", env, logs / "bench-dispatch-worker.log"))
        latencies = []
        for _ in range(args.latency_samples):
            sent = datetime.now(UTC)
            job = client.post("/v1/jobs", json={"kind": "test", "spec": {"steps": 0}}).json()
            done = client.get(f"/v1/jobs/{job['id']}/wait", params={"timeout": 10}).json()
            latencies.append((datetime.fromisoformat(done["started_at"]) - sent).total_seconds() * 1000)
        latencies.sort()
        p50, p99 = statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1]

        # 3. Lifecycle throughput: submit over HTTP, claimed, succeeded, with all events written.
        with session_scope() as session:
            before = session.scalar(select(func.count()).select_from(Job).where(Job.status == "succeeded"))
        start = time.perf_counter()
        statuses = post_many("127.0.0.1", port, "/v1/jobs", b'{"kind": "test", "spec": {"steps": 0}}',
                             headers={"Authorization": f"Bearer {key}"}, count=args.jobs, connections=8)
        submit_s = time.perf_counter() - start
        assert statuses == [201] * args.jobs, set(statuses)
        while True:
            with session_scope() as session:
                n = session.scalar(select(func.count()).select_from(Job).where(Job.status == "succeeded"))
            if n - before >= args.jobs:
                break
            time.sleep(0.02)
        jobs_per_s = args.jobs / (time.perf_counter() - start)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
    print(f"POST→running      p50 {p50:.1f} ms   p99 {p99:.1f} ms   ({args.latency_samples} jobs, idle worker)")
    print(f"lifecycle         {jobs_per_s:.0f} jobs/s   ({args.jobs} test jobs via HTTP, worker -c {CONCURRENCY})")
    print(f"  (of which HTTP submission took {submit_s:.2f} s)")
    print(f"raw Celery no-op  {noop_per_s:.0f} tasks/s")
    print(json.dumps({"bench": "dispatch", "p50_ms": round(p50, 1), "p99_ms": round(p99, 1),
                      "jobs_per_s": round(jobs_per_s, 1), "celery_noop_per_s": round(noop_per_s, 1),
                      "lifecycle_vs_celery": round(jobs_per_s / noop_per_s, 3)}))


if __name__ == "__main__":
    main()
